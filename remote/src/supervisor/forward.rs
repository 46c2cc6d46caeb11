//! Forwarded calls: the arguments marshalled by the syscall table's spec,
//! sent to the deputy, the outputs written back; with write-behind and
//! read-ahead for pipes and sockets, and job control on the terminal.

use super::*;
use signals::{ignores_or_blocks, stop_as, stop_is_default};

impl Supervisor {
    /// /dev/tty is the controlling terminal of whoever opens it: only the
    /// process itself, at home, has that terminal. None for any other call.
    pub(super) fn open_at_home(&mut self, name: &str, n: &SeccompNotif) -> Option<Flow> {
        let a = n.data.args;
        let path = match name {
            "open" => a[0],
            "openat" | "openat2" => a[1],
            _ => return None,
        };
        (self.read_mem(path, 9)? == b"/dev/tty\0").then(|| self.go_home("opening /dev/tty runs at home", Some(n.id)))
    }

    pub(super) fn eval(&self, l: Len, args: &mut [u64; 6]) -> Option<usize> {
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
                // An unreadable length: the buffer travels empty, and the
                // deputy's kernel fails on the length where the guest's would
                // have, after any check it makes first.
                match self.read_mem(args[i], 4) {
                    Some(b) if args[i] != 0 => (u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize).min(MAX_IO),
                    _ => 0,
                }
            }
            Len::FdSet(i) => (args[i] as usize).div_ceil(64) * 8,
        })
    }

    pub(super) fn forward(&mut self, n: &SeccompNotif) -> Flow {
        let nr = n.data.nr as u32;
        let mut args = n.data.args;
        let id = n.id;
        // Calls with a shape of their own.
        let name = syscalls::name(nr);
        let (fnr, spec, iov): (u32, Vec<Arg>, Option<Iovecs>) = match name {
            "readv" | "writev" | "preadv" | "pwritev" => {
                let Some((iov, total)) = self.read_iovecs(args[1], (args[2] as usize).min(1024)) else {
                    self.reply(id, -libc::EFAULT as i64);
                    return Flow::Go;
                };
                // Served at home as the plain call on one gathered buffer.
                let write = matches!(name, "writev" | "pwritev");
                let fnr = match name {
                    "readv" => libc::SYS_read,
                    "writev" => libc::SYS_write,
                    "preadv" => libc::SYS_pread64,
                    _ => libc::SYS_pwrite64,
                } as u32;
                args = [args[0], 0, total as u64, args[3], 0, 0];
                let spec = if write {
                    vec![Arg::Fd, Arg::In(Len::Val(2)), Arg::V, Arg::V]
                } else {
                    vec![Arg::Fd, Arg::OutRet(Len::Val(2)), Arg::V, Arg::V]
                };
                (fnr, spec, Some(iov))
            }
            "ioctl" => match syscalls::ioctl_spec(args[1]) {
                None => return self.go_home(&format!("ioctl {:#x} runs at home", args[1]), Some(id)),
                Some((0, _)) => (nr, vec![Arg::Fd, Arg::V, Arg::V], None),
                Some((len, false)) => (nr, vec![Arg::Fd, Arg::V, Arg::In(Len::Const(len))], None),
                Some((len, true)) => (nr, vec![Arg::Fd, Arg::V, Arg::Out(Len::Const(len))], None),
            },
            "fcntl" => match args[1] {
                0..=4 | 8..=11 | 1024..=1026 | 1030..=1034 => (nr, vec![Arg::Fd, Arg::V, Arg::V], None),
                // Record locks, and owners named by tid (F_SETOWN_EX).
                cmd => return self.go_home(&format!("fcntl command {cmd} runs at home"), Some(id)),
            },
            "kill" => (nr, vec![Arg::V, Arg::V], None),
            "setsockopt" | "getsockopt" if syscalls::sockopt_unit(nr, args[1], args[2]).is_none() => {
                return self.go_home(&format!("{name} level {} option {} runs at home", args[1], args[2]), Some(id));
            }
            "pselect6" if args[5] != 0 => match self.read_mem(args[5], 8) {
                Some(b) if b == [0; 8] => (nr, syscalls::spec(nr).unwrap_or(&[]).to_vec(), None),
                _ => return self.go_home("pselect6 with a signal mask runs at home", Some(id)),
            },
            "ppoll" if args[3] != 0 => return self.go_home("ppoll with a signal mask runs at home", Some(id)),
            "epoll_pwait" if args[4] != 0 => {
                return self.go_home("epoll_pwait with a signal mask runs at home", Some(id));
            }
            _ => match syscalls::spec(nr) {
                Some(s) => (nr, s.to_vec(), None),
                None => return self.go_home(&format!("{name} runs at home"), Some(id)),
            },
        };

        // An fd on shared memory that moved with the process names, at
        // home, the object that memory goes back to: a call on it (but its
        // close) runs there.
        if let Some(fd) = self.moved_fd_in(name, &spec, &args) {
            if name != "close" {
                return self
                    .go_home(&format!("a call on fd {fd}, on shared memory that moved, runs at home"), Some(id));
            }
            self.refs.lock().unwrap_or_else(|p| p.into_inner()).closed(fd);
        }

        // A read answered from what the last one peeked.
        let read_fd =
            (iov.is_none() && !self.threaded() && marshal::may_read_ahead(fnr, &args)).then_some(args[0] as i32);
        if let Some(fd) = read_fd {
            if let Some(n) = self.read_from_ahead(fd, args[1], args[2] as usize) {
                self.reply(id, n);
                return Flow::Go;
            }
        }
        self.ahead = None;

        // Gather the input buffers.
        let mut lens = [0u32; 6];
        let mut readonly_from: [Option<usize>; 6] = [None; 6];
        let mut input = std::mem::take(&mut self.inbuf);
        input.clear();
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
                        input.extend_from_slice(&s);
                        input.push(0);
                        true
                    }
                    None => false,
                },
                // Buffers travel as the prefix the guest can actually supply
                // (readable) or take (writable): the deputy lays each one
                // against a guard page with the call's own counts, so its
                // kernel stops where the guest's would have, and answers as
                // natively (EFAULT, or a short count).
                Arg::In(l) | Arg::InOut(l) if args[i] != 0 || iov.is_some() => match self.eval(l, &mut args) {
                    Some(len) => {
                        // Straight from the guest into the outgoing buffer.
                        let at = input.len();
                        let ok = match (&iov, name) {
                            (Some(v), "writev" | "pwritev") => gather_into(self.gpid, v, &mut input),
                            _ => {
                                let n = read_prefix_into(self.gpid, args[i], len, &mut input);
                                if matches!(*a, Arg::InOut(_)) {
                                    let w = writable_prefix(self.gpid, args[i], n);
                                    if w < n {
                                        // Readable but not writable past w: at most a page of it.
                                        input.truncate(at + n.min(w + 4096));
                                        readonly_from[i] = Some(w);
                                    }
                                }
                                true
                            }
                        };
                        lens[i] = (input.len() - at) as u32;
                        if readonly_from[i].is_some() {
                            lens[i] |= marshal::READONLY_TAIL;
                        }
                        ok
                    }
                    None => false,
                },
                Arg::Out(l) | Arg::OutRet(l) | Arg::OutRetN(l, _) if args[i] != 0 || iov.is_some() => {
                    match self.eval(l, &mut args) {
                        Some(len) => {
                            let len = if matches!(l, Len::DerefU32(_)) {
                                len.saturating_mul(marshal::socklen_unit(nr, &args)).min(MAX_IO)
                            } else {
                                len
                            };
                            if iov.is_some() {
                                lens[i] = len as u32;
                            } else {
                                let w = writable_prefix(self.gpid, args[i], len);
                                lens[i] = w as u32;
                                if w > 0 && w < len {
                                    // The kernel may write part of it and then fail.
                                    let at = input.len();
                                    let got = read_prefix_into(self.gpid, args[i], w, &mut input);
                                    lens[i] = (got as u32) | marshal::PREFILLED;
                                    input.truncate(at + got);
                                }
                            }
                            true
                        }
                        None => false,
                    }
                }
                _ => true,
            };
            if !ok {
                self.inbuf = input;
                self.reply(id, -libc::EFAULT as i64);
                return Flow::Go;
            }
        }
        if !sys::seccomp_id_valid(self.lfd(), id) {
            return Flow::Go;
        }
        // An in-out buffer with a read-only tail: its argument tells the
        // deputy where the writable part ends.
        let mut req_args = args;
        for (i, w) in readonly_from.iter().enumerate() {
            if let Some(w) = w {
                req_args[i] = *w as u64;
            }
        }
        let mut req = SysReq { id: 0, lane: 0, nr: fnr, args: req_args, lens, data: Vec::new() };
        // A write: behind the previous one if it fits its room, else with
        // the room asked for, so the next may go behind.
        let write_fd = (!self.threaded() && marshal::may_write_behind(fnr, &req_args)).then_some(req_args[0] as i32);
        if let Some(fd) = write_fd {
            if self.write_behind(&req, &input, fd) {
                let n = input.len() as i64;
                self.inbuf = input;
                self.reply(id, n);
                return Flow::Go;
            }
            req.nr |= marshal::WRITE_ROOM;
        }
        if read_fd.is_some() {
            req.nr |= marshal::READ_AHEAD;
        }
        self.write_run = None;
        let SysRet { ret, mut data, .. } = match self.call_with_job_control(&req, &input, id) {
            Ok(r) => r,
            Err(flow) => {
                self.inbuf = input;
                return flow;
            }
        };
        if let (Some(fd), true) = (read_fd, ret >= 0) {
            self.keep_ahead(fd, ret as usize, &mut data);
        }
        if let Some(fd) = write_fd {
            let room = room_of(&data);
            if ret == input.len() as i64 && room >= 0 {
                self.write_run = Some((fd, room));
            }
        }
        self.inbuf = input;
        if ret == GO_HOME {
            return self.go_home(&format!("{name} needs home"), Some(id));
        }
        self.sigpipe_if(nr, ret, n.data.args);
        // Scatter the outputs.
        let mut off = 0usize;
        for (i, a) in spec.iter().enumerate() {
            if !marshal::is_out(*a) {
                continue;
            }
            let mut valid = marshal::out_valid_len(*a, lens[i], ret).min(data.len() - off);
            if let (Arg::Out(Len::DerefU32(_)), 0) = (*a, lens[i] & marshal::PREFILLED) {
                // Only what the kernel wrote comes back: the rest after the outputs that follow.
                let later: usize = spec[i + 1..]
                    .iter()
                    .enumerate()
                    .map(|(k, b)| marshal::out_valid_len(*b, lens[i + 1 + k], ret))
                    .sum();
                valid = valid.min((data.len() - off).saturating_sub(later));
            }
            if valid > 0 {
                let piece = &data[off..off + valid];
                match (&iov, name) {
                    (Some(v), "readv" | "preadv") => scatter(self.gpid, v, piece),
                    _ => {
                        let _ = sys::process_vm_writev(self.gpid, piece, &[(args[i], valid)]);
                    }
                }
            }
            off += valid;
        }
        self.reply(id, ret);
        if self.asked_home() {
            return self.go_home("asked to come home", None);
        }
        Flow::Go
    }

    /// Call the deputy; when the deputy was woken out of the call (EINTR),
    /// go home if asked, let the guest's kernel restart or fail the call if a
    /// signal is pending for it, or else issue the call again.
    pub(super) fn call_restartable(&mut self, req: &SysReq, input: &[u8], id: u64) -> Result<SysRet, Flow> {
        loop {
            let r = self.call_deputy(req, input);
            if self.held_now {
                match self.park_or_home(id) {
                    Some(flow) => return Err(flow),
                    None => continue,
                }
            }
            let Some(r) = r else {
                let _ = sys::kill(self.gpid, libc::SIGKILL);
                return Err(Flow::Go);
            };
            if r.ret != -(libc::EINTR as i64) {
                return Ok(r);
            }
            if self.asked_home() {
                return Err(self.go_home("asked to come home", Some(id)));
            }
            if self.lanes.as_ref().is_some_and(|l| l.hold.load(Ordering::SeqCst)) && !self.moving {
                match self.park_or_home(id) {
                    Some(flow) => return Err(flow),
                    None => continue,
                }
            }
            // Woken for a signal: one for this thread alone is queued by it
            // (it may arrive just after the wake-up); one for the process,
            // sent plainly, is seen pending.
            let mut own = false;
            let mut pending = || {
                own = self.has_own_signals();
                self.send_signals_plainly();
                own || self.signal_pending()
            };
            if (0..20).any(|_| pending() || !sleep_ms(1)) {
                if own {
                    self.deliver_own(Some(id));
                    return Err(Flow::Go);
                }
                return Ok(SysRet { id: 0, ret: ERESTARTSYS, data: Vec::new(), more: false });
            }
        }
    }

    /// [`Self::call_restartable`], with the kernel's job control on the
    /// process's controlling terminal: the deputy says when the call comes
    /// from a background group (see `marshal::job_control`), and this side,
    /// which knows the guest's signal state, decides as the kernel would.
    /// Err(Flow::Go) when the call is left unanswered for a signal to
    /// interrupt it (it restarts, or fails with EINTR, as natively).
    pub(super) fn call_with_job_control(&mut self, req: &SysReq, input: &[u8], id: u64) -> Result<SysRet, Flow> {
        let r = self.call_restartable(req, input, id)?;
        let Some((sig, orphaned)) = marshal::job_control_of(r.ret) else { return Ok(r) };
        let fail = |errno: i32| SysRet { id: 0, ret: -(errno as i64), data: Vec::new(), more: false };
        let ignored = ignores_or_blocks(self.gpid, sig);
        if ignored && sig == libc::SIGTTIN || !ignored && orphaned {
            return Ok(fail(libc::EIO));
        }
        let flag = if ignored { marshal::JC_IGNORED } else { marshal::JC_SIGNAL };
        let again = SysReq { nr: req.nr | flag, ..req.clone() };
        let r = self.call_restartable(&again, input, id)?;
        match marshal::job_control_of(r.ret) {
            None => Ok(r),
            Some((_, true)) => Ok(fail(libc::EIO)),
            Some((sig, false)) => {
                // As the kernel's kill of the group: from the kernel
                // (SI_KERNEL), interrupting the call.
                // The guest waits in the call (a wait only an answer ends):
                // the signal is made pending, and the call answered with a
                // restart code, which the kernel turns into a restart or
                // EINTR as it delivers the signal.
                if stop_is_default(self.gpid, sig) {
                    stop_as(&self.flags, self.gpid, sig);
                    self.reply(id, ERESTARTSYS);
                } else {
                    let info = siginfo(sig, libc::SI_KERNEL, None).to_vec();
                    self.flags.signals.lock().unwrap_or_else(|p| p.into_inner()).push((sig, info, 0));
                    self.deliver_signals(Some(id));
                }
                Err(Flow::Go)
            }
        }
    }

    /// sendmsg/recvmsg: the msghdr is flattened into (name, control, data),
    /// run at home on one iovec, and the results written back into the guest's
    /// buffers and msghdr (SCM_RIGHTS fd numbers are home numbers, as are all fds).
    pub(super) fn forward_msg(&mut self, n: &SeccompNotif) -> Flow {
        let (nr, a, id) = (n.data.nr as u32, n.data.args, n.id);
        let name = syscalls::name(nr);
        let Some(h) = self.read_mem(a[1], 56) else {
            self.reply(id, -(libc::EFAULT as i64));
            return Flow::Go;
        };
        let u = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap_or([0; 8]));
        let (name_at, ctl_at, iov_at, iovlen) = (u(0), u(32), u(16), u(24));
        if iovlen > 1024 {
            self.reply(id, -(libc::EMSGSIZE as i64));
            return Flow::Go;
        }
        let namelen = if name_at == 0 { 0 } else { (u(8) & 0xffff_ffff).min(128) };
        let ctllen = if ctl_at == 0 { 0 } else { u(40).min(1 << 16) };
        let Some((iov, total)) = self.read_iovecs(iov_at, iovlen as usize) else {
            self.reply(id, -(libc::EFAULT as i64));
            return Flow::Go;
        };
        let mut lens = [0, 0, namelen as u32, ctllen as u32, total as u32, 0];
        let mut input = Vec::new();
        // The kernel leaves control-message padding untouched: the guest's
        // own bytes go in and come back around what it writes.
        if name == "recvmsg" && ctllen > 0 && read_into(self.gpid, ctl_at, ctllen as usize, &mut input) {
            lens[3] |= marshal::PREFILLED;
        }
        let req =
            SysReq { id: 0, lane: 0, nr, args: [a[0], a[2], namelen, ctllen, total as u64, 0], lens, data: Vec::new() };
        if name == "sendmsg" {
            let ok = read_into(self.gpid, name_at, namelen as usize, &mut input)
                && read_into(self.gpid, ctl_at, ctllen as usize, &mut input)
                && gather_into(self.gpid, &iov, &mut input);
            if !ok {
                self.reply(id, -(libc::EFAULT as i64));
                return Flow::Go;
            }
            // Passing an fd on shared memory that moved: at home.
            let ctl = &input[namelen as usize..(namelen + ctllen) as usize];
            let refs = self.refs.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(fd) = marshal::rights_in(ctl).into_iter().find(|&fd| refs.holds(fd)) {
                return self.go_home(&format!("passing fd {fd}, on shared memory that moved, runs at home"), Some(id));
            }
        }
        let r = match self.call_restartable(&req, &input, id) {
            Ok(r) => r,
            Err(flow) => return flow,
        };
        if name == "recvmsg" && r.ret >= 0 {
            let (nl, cl) = (namelen as usize, ctllen as usize);
            let d = &r.data;
            if d.len() >= nl + cl + 12 {
                let t = &d[d.len() - 12..];
                let got_name = (u32::from_le_bytes([t[0], t[1], t[2], t[3]]) as usize).min(nl);
                let got_ctl = (u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize).min(cl);
                let _ =
                    got_name > 0 && sys::process_vm_writev(self.gpid, &d[..got_name], &[(name_at, got_name)]).is_ok();
                let _ = got_ctl > 0
                    && sys::process_vm_writev(self.gpid, &d[nl..nl + got_ctl], &[(ctl_at, got_ctl)]).is_ok();
                scatter(self.gpid, &iov, &d[nl + cl..d.len() - 12]);
                // msg_namelen (u32 at 8), msg_controllen (u64 at 40), msg_flags (i32 at 48).
                let _ = sys::process_vm_writev(self.gpid, &(got_name as u32).to_le_bytes(), &[(a[1] + 8, 4)]);
                let _ = sys::process_vm_writev(self.gpid, &(got_ctl as u64).to_le_bytes(), &[(a[1] + 40, 8)]);
                let _ = sys::process_vm_writev(self.gpid, &t[8..12], &[(a[1] + 48, 4)]);
            }
        }
        self.sigpipe_if(nr, r.ret, a);
        self.reply(id, r.ret);
        if self.asked_home() {
            return self.go_home("asked to come home", None);
        }
        Flow::Go
    }

    /// The first fd argument of a forwarded call that is an fd on shared
    /// memory that moved with the process (close_range: one in its range).
    fn moved_fd_in(&self, name: &str, spec: &[Arg], args: &[u64; 6]) -> Option<i32> {
        let refs = self.refs.lock().unwrap_or_else(|p| p.into_inner());
        if name == "close_range" {
            let (lo, hi) = (args[0] as u32, args[1] as u32);
            return (lo..=hi.min(lo.saturating_add(1 << 20))).map(|f| f as i32).find(|&f| refs.holds(f));
        }
        spec.iter()
            .enumerate()
            .filter(|(_, a)| matches!(a, Arg::Fd))
            .map(|(i, _)| args[i] as i32)
            .find(|&fd| refs.holds(fd))
    }

    /// Send write `req` (its bytes in `input`) to `fd` behind the previous
    /// ones: answered at once, run by the deputy in order. Only when it
    /// follows a write to the same fd that reported room for it (waiting for
    /// the acknowledgements of writes behind, which report room again): it
    /// then cannot block at home, and it fails only if the peer went away
    /// after it, which the next write learns. False: send it as usual.
    pub(super) fn write_behind(&mut self, req: &SysReq, input: &[u8], fd: i32) -> bool {
        let len = input.len();
        if len == 0 || len as u64 != req.args[2] {
            return false;
        }
        loop {
            match self.write_run {
                Some((f, room)) if f == fd => {
                    if (self.behind_bytes + write_cost(len)) as i64 <= room {
                        break;
                    }
                    if self.behind.is_empty() || !self.settle_one() {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        let rid = self.next_id;
        self.next_id += 1;
        let nr = req.nr | marshal::WRITE_BEHIND | marshal::WRITE_ROOM;
        if let Err(e) = self.send_call(SysReq { id: rid, nr, ..req.clone() }, input) {
            tracing::warn!(%e, "cannot reach the deputy");
            let _ = sys::kill(self.gpid, libc::SIGKILL);
            return false;
        }
        self.behind.push_back((rid, fd, len));
        self.behind_bytes += write_cost(len);
        true
    }

    /// Answer a read of `count` bytes into `buf` of `fd` from what the last
    /// read peeked, and have the deputy take those bytes. None: it cannot
    /// be (another fd, nothing peeked, or more wanted than was peeked while
    /// more may be there); the read goes to the deputy.
    pub(super) fn read_from_ahead(&mut self, fd: i32, buf: u64, count: usize) -> Option<i64> {
        let a = self.ahead.as_mut()?;
        let left = a.data.len() - a.pos;
        if a.fd != fd || count == 0 || count > left && !a.whole {
            return None;
        }
        let n = count.min(left);
        if !matches!(sys::process_vm_writev(self.gpid, &a.data[a.pos..a.pos + n], &[(buf, n)]), Ok(w) if w == n) {
            return None;
        }
        a.pos += n;
        if a.pos == a.data.len() {
            self.ahead = None;
        }
        let take = SysReq {
            id: 0,
            lane: 0,
            nr: marshal::READ_TAKE,
            args: [fd as u64, 0, n as u64, 0, 0, 0],
            lens: [0; 6],
            data: Vec::new(),
        };
        if let Err(e) = self.send_call(take, &[]) {
            tracing::warn!(%e, "cannot reach the deputy");
            let _ = sys::kill(self.gpid, libc::SIGKILL);
        }
        Some(n as i64)
    }

    /// After a read of `fd` that returned `n` bytes: keep what the deputy
    /// peeked after them (the trailer of `data`, which is cut off).
    pub(super) fn keep_ahead(&mut self, fd: i32, n: usize, data: &mut Vec<u8>) {
        if data.len() < n + 4 {
            return;
        }
        let t = data.len() - 4;
        let k = u32::from_le_bytes([data[t], data[t + 1], data[t + 2], data[t + 3]]) as usize;
        if k > 0 && n + k == t {
            self.ahead = Some(ReadAhead { fd, data: data[n..t].to_vec(), pos: 0, whole: k < marshal::AHEAD_MAX });
        }
        data.truncate(n.min(data.len()));
    }

    /// Take the deputy's acknowledgement of the oldest write behind. One
    /// that did not write everything ends the run: the peer went away after
    /// the writes the guest was told of, and the next write (sent as usual)
    /// gets the error from the deputy. False: the link is gone.
    pub(super) fn settle_one(&mut self) -> bool {
        let Some(&(rid, fd, len)) = self.behind.front() else { return true };
        let r = loop {
            let Some(reader) = self.reader.as_mut() else { return false };
            match wire::recv_msg(reader) {
                Ok(Msg::SysRet(r)) if r.id == rid => break r,
                Ok(other) => tracing::warn!(kind = msg_kind(&other), "unexpected frame while settling writes"),
                Err(e) => {
                    tracing::warn!(%e, "link to home lost while writes were behind");
                    self.behind.clear();
                    self.behind_bytes = 0;
                    return false;
                }
            }
        };
        self.behind.pop_front();
        self.behind_bytes -= write_cost(len);
        if r.ret != len as i64 {
            tracing::debug!(fd, ret = r.ret, len, "a write behind did not complete");
            self.write_run = None;
        } else if let Some((f, _)) = self.write_run {
            if f == fd {
                let room = room_of(&r.data);
                self.write_run = (room >= 0).then_some((fd, room));
            }
        }
        true
    }

    /// Every write behind acknowledged (before anything else uses the link).
    pub(super) fn settle_behind(&mut self) -> bool {
        while !self.behind.is_empty() {
            if !self.settle_one() {
                return false;
            }
        }
        true
    }

    /// Send call `req` (its id set) with its input: inline up to INLINE_MAX,
    /// else as a data frame after it (no serialisation copies).
    pub(super) fn send_call(&mut self, req: SysReq, input: &[u8]) -> Result<(), wire::WireError> {
        let inline = input.len() <= marshal::INLINE_MAX;
        let req = SysReq { lane: self.lane.home_tid, data: if inline { input.to_vec() } else { Vec::new() }, ..req };
        let _g = self.flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.lanes.as_ref().is_some_and(|l| l.hold.load(Ordering::SeqCst)) && !self.moving {
            // Another lane takes the process home: nothing more goes out.
            self.held_now = true;
            return Err(wire::WireError::Closed);
        }
        wire::send(&mut self.stream, &Msg::Sys(req))?;
        if !inline {
            wire::send_data(&mut self.stream, input)?;
        }
        Ok(())
    }

    /// Bulk input (over INLINE_MAX) follows the request as a data frame, and
    /// bulk output follows the answer the same way: no serialisation copies.
    pub(super) fn call_deputy(&mut self, req: &SysReq, input: &[u8]) -> Option<SysRet> {
        // Whatever runs at home may read the stream that was peeked.
        self.ahead = None;
        if !self.settle_behind() {
            return None;
        }
        if let Some(l) = self.lanes.clone() {
            let (rid, rx) = l.expect();
            if let Err(e) = self.send_call(SysReq { id: rid, ..req.clone() }, input) {
                l.forget(rid);
                if !self.held_now {
                    tracing::warn!(%e, "cannot reach the deputy");
                }
                return None;
            }
            return match rx.recv() {
                Ok(lanes::Reply::Sys(mut r, data)) => {
                    if r.more {
                        r.data = data;
                    }
                    Some(r)
                }
                _ => {
                    tracing::warn!("link to home lost during a forwarded call");
                    None
                }
            };
        }
        let rid = self.next_id;
        self.next_id += 1;
        if let Err(e) = self.send_call(SysReq { id: rid, ..req.clone() }, input) {
            tracing::warn!(%e, "cannot reach the deputy");
            return None;
        }
        let reader = self.reader.as_mut()?;
        let mut r = loop {
            match wire::recv_into(reader, &mut self.outbuf) {
                Ok(Some(Msg::SysRet(r))) if r.id == rid => break r,
                Ok(other) => tracing::warn!(?other, "unexpected frame while waiting for the deputy"),
                Err(e) => {
                    tracing::warn!(%e, "link to home lost during a forwarded call");
                    return None;
                }
            }
        };
        // Bulk output follows as a data frame.
        if r.more {
            match wire::recv_into(reader, &mut self.outbuf) {
                Ok(None) => r.data = std::mem::take(&mut self.outbuf),
                _ => return None,
            }
        }
        Some(r)
    }

    /// What home's fd `fd` is (path and identity), asked of the deputy.
    /// Err(true): not asked, the process is going home; Err(false): home is gone.
    #[allow(clippy::type_complexity)]
    pub(super) fn fd_ident(&mut self, fd: i32) -> Result<Option<(String, image::FileId)>, bool> {
        if let Some(l) = self.lanes.clone() {
            let (rid, rx) = l.expect();
            let sent = {
                let _g = self.flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                if l.hold.load(Ordering::SeqCst) && !self.moving {
                    l.forget(rid);
                    return Err(true);
                }
                wire::send(&mut self.stream, &Msg::FdIdent { id: rid, fd })
            };
            if sent.is_err() {
                l.forget(rid);
                return Err(false);
            }
            return match rx.recv() {
                Ok(lanes::Reply::Fd(f)) => Ok(f),
                _ => Err(false),
            };
        }
        let rid = self.next_id;
        self.next_id += 1;
        if self.send(&Msg::FdIdent { id: rid, fd }).is_err() {
            return Err(false);
        }
        let reader = self.reader.as_mut().ok_or(false)?;
        loop {
            match wire::recv_msg(reader) {
                Ok(Msg::FdIdentRet { id, file }) if id == rid => return Ok(file),
                Ok(m) => tracing::warn!(?m, "unexpected message while asking about an fd"),
                Err(e) => {
                    tracing::warn!(%e, "link to home lost");
                    return Err(false);
                }
            }
        }
    }
}

pub(super) fn is_own_proc(path: &[u8], home: i32) -> bool {
    let p = String::from_utf8_lossy(path);
    p.starts_with("/proc/self")
        || p.starts_with("/proc/thread-self")
        || p.starts_with(&format!("/proc/{home}/"))
        || p == format!("/proc/{home}")
}

/// Append `len` bytes of the guest's memory at `addr` to `buf`.
pub(super) fn read_into(pid: i32, addr: u64, len: usize, buf: &mut Vec<u8>) -> bool {
    let at = buf.len();
    buf.resize(at + len, 0);
    if len == 0 {
        return true;
    }
    match sys::process_vm_readv(pid, &mut buf[at..], &[(addr, len)]) {
        Ok(n) if n == len => true,
        _ => {
            buf.truncate(at);
            false
        }
    }
}

/// Append what can be read of `len` bytes of the guest's memory at `addr`
/// to `buf`, up to the first unreadable page; how many bytes that was.
pub(super) fn read_prefix_into(pid: i32, addr: u64, len: usize, buf: &mut Vec<u8>) -> usize {
    let at = buf.len();
    buf.resize(at + len, 0);
    let n = if len == 0 { 0 } else { sys::process_vm_readv(pid, &mut buf[at..], &[(addr, len)]).unwrap_or(0) };
    buf.truncate(at + n);
    n
}

/// How many of `len` bytes at `addr` the kernel could write for the guest:
/// up to the first page that is not both readable and writable. Each page is
/// probed by reading one byte and writing the same byte back (the guest waits
/// in its call, so nothing else of it runs meanwhile).
pub(super) fn writable_prefix(pid: i32, addr: u64, len: usize) -> usize {
    const PAGE: u64 = 4096;
    if len == 0 {
        return 0;
    }
    let first = addr & !(PAGE - 1);
    let Some(end) = addr.checked_add(len as u64) else { return 0 };
    let pages: Vec<(u64, usize)> = (first..end).step_by(PAGE as usize).map(|p| (p.max(addr), 1)).collect();
    let mut good = 0usize;
    let mut byte = vec![0u8; 1024];
    for chunk in pages.chunks(1024) {
        let r = sys::process_vm_readv(pid, &mut byte[..chunk.len()], chunk).unwrap_or(0);
        let w = if r > 0 { sys::process_vm_writev(pid, &byte[..r], &chunk[..r]).unwrap_or(0) } else { 0 };
        good += w;
        if w < chunk.len() {
            break;
        }
    }
    if good == pages.len() {
        len
    } else {
        ((first + good as u64 * PAGE).saturating_sub(addr) as usize).min(len)
    }
}

/// Append the bytes of an iovec array of the guest to `buf`.
pub(super) fn gather_into(pid: i32, iov: &[(u64, usize)], buf: &mut Vec<u8>) -> bool {
    let total: usize = iov.iter().map(|x| x.1).sum();
    let at = buf.len();
    buf.resize(at + total, 0);
    let pieces: Vec<(u64, usize)> = iov.iter().copied().filter(|x| x.1 > 0).collect();
    if total == 0 {
        return true;
    }
    match sys::process_vm_readv(pid, &mut buf[at..], &pieces) {
        Ok(n) if n == total => true,
        _ => {
            buf.truncate(at);
            false
        }
    }
}

pub(super) fn scatter(pid: i32, iov: &[(u64, usize)], data: &[u8]) {
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

/// What a write of `len` bytes takes of the room a deputy reports: its
/// bytes and the kernel's overhead per buffer (an upper bound).
pub(super) fn write_cost(len: usize) -> usize {
    len + 1024 + len / 32
}

/// The room a deputy reported after a write (`marshal::WRITE_ROOM`), -1 if none.
pub(super) fn room_of(data: &[u8]) -> i64 {
    data.get(..8).map_or(-1, |b| i64::from_le_bytes(b.try_into().unwrap_or([0xff; 8])))
}
