//! Signals: kill, tkill and tgkill of the process itself; queueing signals
//! from home in the guest (each by the thread it is for); SIGPIPE after a
//! write home failed with EPIPE; and the helper thread that relays home's
//! signals and control messages.

use super::*;

impl Supervisor {
    /// kill, tkill or tgkill of the process itself, or one of its threads,
    /// by home ids: queued in the guest with the process's own siginfo
    /// ([`Supervisor::self_signal`]). None for any other call.
    pub(super) fn signal_to_itself(&mut self, name: &str, n: &SeccompNotif) -> Option<Flow> {
        let (a, home) = (n.data.args, self.home_pid as u64);
        let thread = |t: u64| i32::try_from(t).ok().and_then(|t| self.guest_tid_of(t));
        let (sig, code, to) = match name {
            "kill" if a[0] == home => (a[1] as i32, SI_USER, None),
            "tkill" => (a[1] as i32, SI_TKILL, Some(thread(a[0])?)),
            "tgkill" if a[0] == home => (a[2] as i32, SI_TKILL, Some(thread(a[1])?)),
            _ => return None,
        };
        let flow = self.self_signal(n.id, sig, code, to);
        if sig != 0 && to != Some(self.lane.tid) {
            self.wake_lane(to);
        }
        Some(flow)
    }

    /// Does the guest have a signal pending that it does not block?
    pub(super) fn signal_pending(&self) -> bool {
        let path = format!("/proc/{}/task/{}/status", self.gpid, self.lane.tid);
        let Ok(st) = std::fs::read_to_string(path) else { return false };
        let f = |k: &str| procfs::hex_mask(&procfs::status_field_in(&st, k).unwrap_or_default());
        (f("SigPnd") | f("ShdPnd")) & !f("SigBlk") != 0
    }

    /// Signals from home that wait for [`Self::deliver_signals`], sent
    /// plainly now: the guest waits in a call at the deputy, where it cannot
    /// be stopped, and the call's restart depends on them. (Their sender
    /// then reads as this node's daemon.)
    pub(super) fn send_signals_plainly(&mut self) {
        self.write_run = None;
        self.ahead = None;
        let queued = std::mem::take(&mut *self.flags.signals.lock().unwrap_or_else(|p| p.into_inner()));
        for (sig, _, tid) in queued {
            self.send_plainly(sig, tid);
        }
    }

    /// Whether a signal waits for this lane to queue it.
    pub(super) fn has_own_signals(&self) -> bool {
        self.lanes.is_some()
            && self
                .flags
                .lane_signals
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .any(|s| s.by == self.lane.home_tid)
    }

    /// Queue the signals waiting for this lane (see [`LaneSignal`]): its
    /// thread, stopped between two calls with its registers untouched,
    /// queues each to itself (or, the leader, to its process). `pending`
    /// is the call it waits in at home, woken for them: answered with a
    /// restart code as the thread is stopped, so the kernel restarts it or
    /// fails it with EINTR as it delivers them. What cannot be queued so is
    /// sent plainly.
    pub(super) fn deliver_own(&mut self, pending: Option<u64>) {
        let me = self.lane.home_tid;
        let mine: Vec<LaneSignal> = {
            let mut all = self.flags.lane_signals.lock().unwrap_or_else(|p| p.into_inner());
            let (mine, rest) = std::mem::take(&mut *all).into_iter().partition(|s| s.by == me);
            *all = rest;
            mine
        };
        if mine.is_empty() {
            if let Some(id) = pending {
                self.reply(id, ERESTARTSYS);
            }
            return;
        }
        let items: Vec<(Option<i32>, i32, Vec<u8>)> = mine.into_iter().map(|s| (s.to, s.sig, s.info)).collect();
        self.queue_in_thread(self.lane.tid, pending, &items);
    }

    /// Stop thread `tid` between two of its calls, its registers untouched
    /// (`pending`, the call it waits in at home, is answered with a restart
    /// code as it is asked to stop: only an answer ends that wait), have it
    /// queue each signal (to itself, or with `to` None, the leader, to its
    /// process) with its siginfo, all signals blocked meanwhile, and let it
    /// go. The kernel then restarts that call or fails it with EINTR as it
    /// delivers them. What cannot be queued so is sent plainly.
    pub(super) fn queue_in_thread(&mut self, tid: i32, pending: Option<u64>, items: &[(Option<i32>, i32, Vec<u8>)]) {
        let flags = self.flags.clone();
        let _traced = flags.ptrace_lock.lock().unwrap_or_else(|p| p.into_inner());
        let (lfd, gpid) = (self.lfd(), self.gpid);
        let mut answered = pending.is_none();
        let mut answer = || {
            if let Some(id) = pending {
                answered = sys::seccomp_send(lfd, id, ERESTARTSYS, false).is_ok();
            }
        };
        let mut sent = 0;
        let r = Tracee::seize_exact_then(tid, true, &mut answer).and_then(|mut t| {
            let r = (|| {
                if !t.use_last_syscall()? && !t.use_vdso_syscall()? {
                    return Ok(());
                }
                let mask = t.sigmask().unwrap_or(0);
                let _ = t.set_sigmask(!0);
                let at = below_red_zone(&t);
                for (to, sig, info) in items {
                    let r = match to {
                        Some(_) => t.queue_to_own_thread(gpid, *sig, info, at)?,
                        None => t.queue_signal(None, *sig, info, at)?,
                    };
                    if r != 0 {
                        break;
                    }
                    sent += 1;
                }
                let _ = t.set_sigmask(mask);
                Ok(())
            })();
            t.repair_sigwait();
            let _ = t.detach();
            r
        });
        if let Err(e) = r {
            keep_exit_status(&self.flags, gpid, &e);
            tracing::debug!(%e, tid, "a thread could not queue its signals");
        }
        for (to, sig, _) in &items[sent..] {
            let _ = match to {
                Some(t) => sys::tgkill(gpid, *t, *sig),
                None => sys::kill(gpid, *sig),
            };
        }
        if let (false, Some(id)) = (answered, pending) {
            self.reply(id, ERESTARTSYS);
        }
    }

    /// Send `sig` from here to the process, or to its thread of home tid
    /// `tid` (a thread that has ended gets nothing).
    pub(super) fn send_plainly(&self, sig: i32, tid: i32) {
        if tid == 0 {
            let _ = sys::kill(self.gpid, sig);
        } else if let Some(t) = self.guest_tid_of(tid) {
            let _ = sys::tgkill(self.gpid, t, sig);
        }
    }

    /// Signals from home (or job control's): the guest, stopped between two
    /// calls, queues each to itself with its siginfo (a call it was in
    /// restarts or fails with EINTR as the kernel decides when the signal is
    /// delivered). `pending` is a notification the guest waits in: it is
    /// answered with a restart code as the guest is stopped (only an answer
    /// ends that wait). What cannot be queued so is sent plainly.
    pub(super) fn deliver_signals(&mut self, pending: Option<u64>) {
        let queued = std::mem::take(&mut *self.flags.signals.lock().unwrap_or_else(|p| p.into_inner()));
        if !queued.is_empty() {
            self.write_run = None;
            self.ahead = None;
        }
        if queued.is_empty() {
            if let Some(id) = pending {
                self.reply(id, ERESTARTSYS);
            }
            return;
        }
        // Another thread than the leader waits in call `pending` (job
        // control): this thread queues them to itself (a process's signal
        // goes to a thread that does not block it, as this one), as it is
        // stopped and the call answered with a restart code.
        if let (Some(id), true) = (pending, self.lane_no != 0) {
            let me = (self.lane.home_tid, self.lane.tid);
            let mut own = self.flags.lane_signals.lock().unwrap_or_else(|p| p.into_inner());
            for (sig, info, tid) in queued {
                if tid == 0 || tid == me.0 {
                    own.push(LaneSignal { by: me.0, to: Some(me.1), sig, info });
                } else {
                    drop(own);
                    self.send_plainly(sig, tid);
                    own = self.flags.lane_signals.lock().unwrap_or_else(|p| p.into_inner());
                }
            }
            drop(own);
            self.deliver_own(Some(id));
            return;
        }
        // The leader queues them: a process's, or its own.
        let mut items = Vec::with_capacity(queued.len());
        for (sig, info, tid) in queued {
            match tid {
                0 => items.push((None, sig, info)),
                h if h == self.home_pid => items.push((Some(self.gpid), sig, info)),
                h => self.send_plainly(sig, h),
            }
        }
        self.queue_in_thread(self.gpid, pending, &items);
    }

    /// kill, tkill or tgkill of the process itself (call `id`): to the
    /// process, or to its thread `to` (a guest tid). As natively, the signal
    /// comes from the process: the call is answered, then the leader is
    /// stopped and made to queue the signal with its home pid and uid as the
    /// sender (the kernel allows any sender only for a signal to one's own
    /// thread group, from its leader), so a handler or signalfd reads the
    /// same siginfo.
    pub(super) fn self_signal(&mut self, id: u64, sig: i32, code: i32, to: Option<i32>) -> Flow {
        self.write_run = None;
        self.ahead = None;
        if !(0..=64).contains(&sig) {
            self.reply(id, -libc::EINVAL as i64);
            return Flow::Go;
        }
        if sig == 0 {
            self.reply(id, 0);
            return Flow::Go;
        }
        let plain = |gpid: i32, sig: i32| {
            let r = match to {
                Some(t) => sys::tgkill(gpid, t, sig),
                None => sys::kill(gpid, sig),
            };
            match r {
                Ok(()) => 0,
                Err(e) => -(e.raw_os_error().unwrap_or(libc::EINVAL) as i64),
            }
        };
        // The guest is alone in an orphaned process group, where the kernel
        // drops TSTP/TTIN/TTOU with the default action: stop it for real.
        if stop_is_default(self.gpid, sig) {
            self.reply(id, plain(self.gpid, libc::SIGSTOP));
            return Flow::Go;
        }
        // raise() in another thread than the leader: the thread, stopped as
        // its call is answered, queues it to itself with the process's own
        // siginfo (the kernel takes another sender only for a signal to
        // oneself, or from the leader for its process).
        if self.lane_no != 0 && to == Some(self.lane.tid) {
            let flags = self.flags.clone();
            let _traced = flags.ptrace_lock.lock().unwrap_or_else(|p| p.into_inner());
            let (lfd, gpid, tid) = (self.lfd(), self.gpid, self.lane.tid);
            let mut answered = false;
            let mut answer = || {
                answered = sys::seccomp_send(lfd, id, 0, false).is_ok();
            };
            let info = siginfo(sig, code, Some((self.home_pid, self.creds.uids[0])));
            let r = Tracee::seize_then(tid, true, &mut answer).and_then(|mut t| {
                let sent = (|| {
                    if !t.use_last_syscall()? && !t.use_vdso_syscall()? {
                        return Ok(false);
                    }
                    let at = below_red_zone(&t);
                    Ok(t.queue_to_own_thread(gpid, sig, &info, at)? == 0)
                })();
                let _ = t.detach();
                sent
            });
            if let Err(e) = &r {
                keep_exit_status(&self.flags, gpid, e);
            }
            if !matches!(r, Ok(true)) {
                let r = plain(gpid, sig);
                if !answered {
                    self.reply(id, r);
                }
            }
            return Flow::Go;
        }
        // With several threads, a signal for another thread is queued by
        // that thread, and one for the process by the leader (the kernel
        // takes the process's own siginfo only from them), each between two
        // of its calls, or as its lane's call at home is woken for it.
        if self.lanes.is_some() && to != Some(self.lane.tid) && !(to.is_none() && self.lane_no == 0) {
            let by = match to {
                Some(t) => self.home_tid_of(t).unwrap_or(0),
                None => self.home_pid,
            };
            let info = siginfo(sig, code, Some((self.home_pid, self.creds.uids[0]))).to_vec();
            self.flags.lane_signals.lock().unwrap_or_else(|p| p.into_inner()).push(LaneSignal { by, to, sig, info });
            self.reply(id, 0);
            self.flags.wake_lanes();
            return Flow::Go;
        }
        let flags = self.flags.clone();
        let _traced = flags.ptrace_lock.lock().unwrap_or_else(|p| p.into_inner());
        let lfd = self.lfd();
        let mut answered = false;
        let mut answer = || {
            answered = sys::seccomp_send(lfd, id, 0, false).is_ok();
        };
        let r = Tracee::seize_then(self.gpid, true, &mut answer).and_then(|mut t| {
            let sent = self.queue_from_leader(&mut t, sig, code, to);
            let _ = t.detach();
            sent
        });
        match r {
            Ok(true) => {}
            // No injection possible: send it from here (the sender then
            // reads as this node's daemon).
            Ok(false) | Err(_) => {
                if let Err(e) = &r {
                    keep_exit_status(&self.flags, self.gpid, e);
                    tracing::debug!(%e, "could not have the guest signal itself");
                }
                let r = plain(self.gpid, sig);
                if !answered {
                    self.reply(id, r);
                }
            }
        }
        Flow::Go
    }

    /// In the stopped leader: queue `sig` to the process or its thread `to`,
    /// with the siginfo of a kill (SI_USER) or tkill (SI_TKILL) from its
    /// home pid and uid.
    pub(super) fn queue_from_leader(
        &self,
        t: &mut Tracee,
        sig: i32,
        code: i32,
        to: Option<i32>,
    ) -> Result<bool, om_runtime::ptrace::TraceError> {
        if !t.use_last_syscall()? && !t.use_vdso_syscall()? {
            return Ok(false);
        }
        let info = siginfo(sig, code, Some((self.home_pid, self.creds.uids[0])));
        let at = below_red_zone(t);
        Ok(t.queue_signal(to, sig, &info, at)? == 0)
    }

    /// A write to a pipe or socket with no reader fails with EPIPE and, unless
    /// MSG_NOSIGNAL, raises SIGPIPE in the writer. The deputy ignores SIGPIPE,
    /// so the guest gets it here, pending when the call returns, as natively.
    pub(super) fn sigpipe_if(&self, nr: u32, ret: i64, args: [u64; 6]) {
        if ret != -(libc::EPIPE as i64) {
            return;
        }
        let raises = match syscalls::name(nr) {
            "write" | "pwrite64" | "writev" | "pwritev" | "sendfile" | "splice" | "tee" | "copy_file_range" => true,
            // Unless MSG_NOSIGNAL.
            "sendto" => args[3] & libc::MSG_NOSIGNAL as u64 == 0,
            "sendmsg" => args[2] & libc::MSG_NOSIGNAL as u64 == 0,
            _ => false,
        };
        if raises {
            let _ = sys::tgkill(self.gpid, self.lane.tid, libc::SIGPIPE);
        }
    }
}

/// A siginfo_t (128 bytes): signo, errno, code, then the sender's pid and
/// uid at offset 16 for a signal a process sent.
pub(super) fn siginfo(sig: i32, code: i32, sender: Option<(i32, u32)>) -> [u8; 128] {
    let mut info = [0u8; 128];
    info[0..4].copy_from_slice(&sig.to_le_bytes());
    info[8..12].copy_from_slice(&code.to_le_bytes());
    if let Some((pid, uid)) = sender {
        info[16..20].copy_from_slice(&pid.to_le_bytes());
        info[20..24].copy_from_slice(&uid.to_le_bytes());
    }
    info
}

/// Scratch memory in a stopped guest: below the red zone of the stack it
/// stopped on.
pub(super) fn below_red_zone(t: &Tracee) -> u64 {
    (t.saved.rsp - 1024) & !15
}

pub(super) fn stop_is_default(gpid: i32, sig: i32) -> bool {
    if sig == libc::SIGSTOP {
        return true;
    }
    if !matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU) {
        return false;
    }
    let Ok(st) = std::fs::read_to_string(format!("/proc/{gpid}/status")) else { return false };
    let f = |k: &str| procfs::hex_mask(&procfs::status_field_in(&st, k).unwrap_or_default());
    (f("SigCgt") | f("SigIgn")) & (1u64 << (sig - 1)) == 0
}

/// Stop the guest for stop signal `sig` with its default action: with
/// SIGSTOP (the kernel drops the others in the guest's orphaned group),
/// reported home as `sig`.
pub(super) fn stop_as(flags: &Flags, gpid: i32, sig: i32) {
    *flags.stop_sig.lock().unwrap_or_else(|p| p.into_inner()) = Some(sig);
    let _ = sys::kill(gpid, libc::SIGSTOP);
}

/// Whether the guest ignores or blocks `sig`.
pub(super) fn ignores_or_blocks(gpid: i32, sig: i32) -> bool {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{gpid}/status")) else { return false };
    let f = |k: &str| procfs::hex_mask(&procfs::status_field_in(&st, k).unwrap_or_default());
    (f("SigIgn") | f("SigBlk")) & (1u64 << (sig - 1)) != 0
}

/// The helper of one guest: applies signals and requests from home (second
/// link), and reports the guest's end. It wakes the supervisor out of RECV
/// with the wake-up signal when it needs it.
pub(super) fn helper(mut ctl: Link, mut out: Link, gpid: i32, flags: Arc<Flags>, tids: Arc<Vec<(i32, i32)>>) {
    let wake = || {
        let tid = flags.tid.load(Ordering::SeqCst);
        if tid != 0 {
            let _ = sys::tgkill(sys::getpid(), tid, sys::wake_signal());
        }
        flags.wake_lanes();
    };
    let pidfd = sys::pidfd_open(gpid, 0).ok();
    let pfd = pidfd.as_ref().map_or(-1, |p| p.as_raw_fd());
    let mut home_gone = false;
    let mut reported = std::time::Instant::now();
    loop {
        if flags.done.load(Ordering::SeqCst) {
            return answer_pre_copy(&mut ctl, &flags);
        }
        // What the guest uses, once a second, for home's balancer.
        if !home_gone && reported.elapsed() >= std::time::Duration::from_secs(1) {
            reported = std::time::Instant::now();
            // Skipped while a pre-copy home holds the link.
            if let (Some((cpu_ns, run_ns, rss)), Ok(_g)) = (usage(gpid), flags.ctl_lock.try_lock()) {
                if wire::send(&mut ctl, &Msg::Usage { cpu_ns, run_ns, rss }).is_err() {
                    home_gone = true;
                }
            }
        }
        // Job control: tell home when the guest stops, so the placeholder (and
        // the parent's wait) stops too.
        if !flags.going_home.load(Ordering::SeqCst) {
            if let Ok(_g) = flags.ptrace_lock.try_lock() {
                if let Ok(Some((true, sig))) = sys::waitid_job(gpid) {
                    let sig = flags.stop_sig.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or(sig);
                    let _g = flags.ctl_lock.lock().unwrap_or_else(|p| p.into_inner());
                    if wire::send(&mut ctl, &Msg::Stopped { sig }).is_err() {
                        home_gone = true;
                    }
                }
            }
        }
        let cfd = if home_gone { -1 } else { ctl.as_raw_fd() };
        let rev = match sys::poll(&[(cfd, libc::POLLIN), (pfd, libc::POLLIN)], 20) {
            Ok(r) => r,
            Err(_) => continue,
        };
        if rev[1] != 0 {
            // The guest ended. While the supervisor takes it home, its end
            // may be the move's (done follows) or an exit during a return
            // that then fails: wait for the supervisor to tell which.
            if flags.going_home.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(5));
                continue;
            }
            // A thread that holds the guest traced may have taken its end
            // in its own wait: it keeps the status before it lets go.
            let status = {
                let _traced = flags.ptrace_lock.lock().unwrap_or_else(|p| p.into_inner());
                match sys::waitpid(gpid, libc::__WALL) {
                    Ok((_, st)) => Some(st),
                    Err(_) => flags.reaped.lock().unwrap_or_else(|p| p.into_inner()).take(),
                }
            };
            let (code, signal) = match status {
                Some(st) if libc::WIFEXITED(st) => (libc::WEXITSTATUS(st), 0),
                Some(st) if libc::WIFSIGNALED(st) => (0, libc::WTERMSIG(st)),
                _ => (0, libc::SIGKILL),
            };
            tracing::info!(guest = gpid, code, signal, "guest ended");
            {
                let _g = flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                let _ = wire::send(&mut out, &Msg::Exited { code, signal });
            }
            flags.exited.store(true, Ordering::SeqCst);
            while !flags.done.load(Ordering::SeqCst) {
                wake();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            return answer_pre_copy(&mut ctl, &flags);
        }
        if rev[0] != 0 {
            match wire::recv(&mut ctl) {
                Ok(Frame::Msg(Msg::Signal { sig, .. })) if sig < 0 => {
                    // A terminal stop for an orphaned group at home: only a
                    // handler sees it, as natively.
                    if !stop_is_default(gpid, -sig) {
                        let _ = sys::kill(gpid, -sig);
                    }
                }
                Ok(Frame::Msg(Msg::Signal { sig, info, tid })) => {
                    if stop_is_default(gpid, sig) {
                        tracing::info!(guest = gpid, sig, "stop signal from home; stopping the guest");
                        stop_as(&flags, gpid, sig);
                    } else if info.len() == 128
                        && i32::from_le_bytes([info[0], info[1], info[2], info[3]]) == sig
                        && sig != libc::SIGKILL
                        && sig != libc::SIGCONT
                        && !flags.going_home.load(Ordering::SeqCst)
                    {
                        match tids.iter().find(|t| t.1 == tid && tid != 0 && tids.len() > 1) {
                            // For one thread of several: that thread's lane
                            // queues it (see Supervisor::deliver_own); home
                            // woke the call it may wait in.
                            Some(&(g, _)) => {
                                flags.lane_signals.lock().unwrap_or_else(|p| p.into_inner()).push(LaneSignal {
                                    by: tid,
                                    to: Some(g),
                                    sig,
                                    info,
                                });
                                // Its call at home, if any, is woken again now
                                // the signal waits here.
                                let _g = flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                                if !flags.going_home.load(Ordering::SeqCst) {
                                    let _ = wire::send(&mut out, &Msg::Wake { lane: tid });
                                }
                            }
                            None => flags.signals.lock().unwrap_or_else(|p| p.into_inner()).push((sig, info, tid)),
                        }
                        wake();
                    } else {
                        match tids.iter().find(|t| t.1 == tid && tid != 0) {
                            Some(&(g, _)) => {
                                let _ = sys::tgkill(gpid, g, sig);
                            }
                            None => {
                                let _ = sys::kill(gpid, sig);
                            }
                        }
                    }
                }
                // Home's answers to a pre-copy home.
                Ok(Frame::Msg(
                    m @ (Msg::OfferOk { .. } | Msg::Refused { .. } | Msg::PreOk | Msg::RestoreFailed { .. }),
                )) => {
                    if let Some(tx) = flags.pre_answers.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                        let _ = tx.send(m);
                    }
                }
                Ok(Frame::Msg(Msg::Kill)) => {
                    let _ = sys::kill(gpid, libc::SIGKILL);
                }
                Ok(Frame::Msg(Msg::ComeHome)) => {
                    flags.come_home.store(true, Ordering::SeqCst);
                    for _ in 0..400 {
                        if !flags.come_home.load(Ordering::SeqCst) || flags.done.load(Ordering::SeqCst) {
                            break;
                        }
                        wake();
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
                Ok(f) => tracing::warn!(kind = frame_kind(&f), "unexpected frame on the control link"),
                Err(e) => {
                    home_gone = true;
                    if !flags.going_home.load(Ordering::SeqCst) && !flags.done.load(Ordering::SeqCst) {
                        tracing::warn!(guest = gpid, %e, "home's control link closed; killing the guest");
                        let _ = sys::kill(gpid, libc::SIGKILL);
                    }
                }
            }
        }
    }
}

/// The guest is gone (or home) while a pre-copy home still runs: home's
/// answers to it are still handed over, so that it ends in step with home
/// (it tells home the process ended in place of its pages).
fn answer_pre_copy(ctl: &mut Link, flags: &Flags) {
    while matches!(*flags.pre.lock().unwrap_or_else(|p| p.into_inner()), super::home::Pre::Running) {
        match sys::poll(&[(ctl.as_raw_fd(), libc::POLLIN)], 20) {
            Ok(r) if r[0] & libc::POLLIN != 0 => {}
            Ok(r) if r[0] != 0 => return,
            _ => continue,
        }
        match wire::recv(ctl) {
            Ok(Frame::Msg(
                m @ (Msg::OfferOk { .. } | Msg::Refused { .. } | Msg::PreOk | Msg::RestoreFailed { .. }),
            )) => {
                if let Some(tx) = flags.pre_answers.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    let _ = tx.send(m);
                }
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

/// A wait of ours on the guest's leader (the stop after a seize, or an
/// injected call) may have taken its exit status: kept for the helper,
/// which reports it home. Lost, the parent would see a SIGKILL.
pub(super) fn keep_exit_status(flags: &Flags, gpid: i32, e: &om_runtime::ptrace::TraceError) {
    if let om_runtime::ptrace::TraceError::Died { pid, status } = *e {
        if pid == gpid && status >= 0 {
            *flags.reaped.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
        }
    }
}
