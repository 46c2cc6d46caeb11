//! Going home: the process's image sent back to the deputy, with the
//! other lanes held.

use super::*;

/// The pre-copy of a return home: run by a thread of its own, on the
/// control link, while the lanes go on serving the guest's calls (home's
/// deputy serves them on the call link meanwhile).
#[derive(Default)]
pub(super) enum Pre {
    #[default]
    Idle,
    Running,
    /// Its outcome, with the gang's return it belongs to.
    Done(Option<Attempt>, Result<Box<PreCopied>, crate::GuestError>),
}

/// A gang's return home: (the token home knows it by, where the members
/// meet, their pids here).
pub(super) type Attempt = (u64, Arc<om_runtime::gang::Sync>, Vec<i32>);

/// A pre-copy home has laid out: what was sent, for the freeze to send
/// only what changed since.
pub(super) struct PreCopied {
    pre: transfer::PreCopy,
    /// The mapped files home has identical (from its answer to the offer).
    same: Vec<String>,
}

/// How long the pre-copy waits for home to answer (home lays out the pages
/// as they come, so its answer follows the last of them closely).
const ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The pre-copy thread: offer, layout and pages on the control link, each
/// step answered by home there (through the helper, `Flags::pre_answers`).
fn precopy(
    flags: &Flags,
    gpid: i32,
    refs: &Mutex<image::HomeRefs>,
    attempt: Option<&Attempt>,
) -> Result<PreCopied, crate::GuestError> {
    let mut ctl = {
        let c = flags.ctl_out.lock().unwrap_or_else(|p| p.into_inner());
        match c.as_ref() {
            Some(c) => c.try_clone()?,
            None => return Err(crate::GuestError::Refused("no control link to home".into())),
        }
    };
    let (tx, rx) = std::sync::mpsc::channel();
    *flags.pre_answers.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    // Home answers the offer whatever happens to the process meanwhile (and
    // then expects the pre-copy, or word that it ended); the answer to the
    // pre-copy is not waited for once the process has ended.
    let answer = |what: &str, until_exit: bool| -> Result<Msg, crate::GuestError> {
        let until = std::time::Instant::now() + ANSWER_WAIT;
        loop {
            match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                Ok(m) => return Ok(m),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                    if std::time::Instant::now() < until && !(until_exit && flags.exited.load(Ordering::SeqCst)) => {}
                Err(_) => return Err(crate::GuestError::Refused(format!("home did not answer the {what}"))),
            }
        }
    };
    // The link is the pre-copy's from the offer to the last page (home
    // reads nothing else there meanwhile).
    let held = flags.ctl_lock.lock().unwrap_or_else(|p| p.into_inner());
    let send = |ctl: &mut Link, m: &Msg| -> Result<(), crate::GuestError> {
        wire::send(ctl, m).map_err(crate::GuestError::from)
    };
    let gang = attempt.map_or((0, 1), |(token, sync, _)| (*token, sync.size() as u32));
    let started = std::time::Instant::now();
    tracing::info!(guest = gpid, at_ns = wall_ns(), "pre-copy home started");
    let offer = transfer::offer(gpid, 0, 0, -1.0, gang);
    let files: Vec<String> = match &offer {
        Msg::Offer { files, .. } => files.iter().map(|f| f.0.clone()).collect(),
        _ => Vec::new(),
    };
    send(&mut ctl, &offer)?;
    let reopen = match answer("offer", false)? {
        Msg::OfferOk { reopen } => reopen,
        Msg::Refused { reason } => return Err(crate::GuestError::Refused(reason)),
        m => return Err(wire::WireError::Unexpected(format!("{m:?} instead of an answer to the offer")).into()),
    };
    // Home now expects the pre-copy: a failure before it is sent is
    // announced (RestoreFailed in its place).
    let same_files: Vec<String> = files.into_iter().zip(reopen).filter(|(_, ok)| *ok).map(|(p, _)| p).collect();
    let same = |p: &str| same_files.iter().any(|q| q == p);
    let pre = image::pre_image(gpid, &same).map_err(crate::GuestError::from).and_then(|mut pre| {
        refs.lock().unwrap_or_else(|p| p.into_inner()).mark(&mut pre);
        if attempt.is_some() {
            image::keep_no_shared(&mut pre).map_err(crate::GuestError::Refused)?;
        }
        Ok(pre)
    });
    let pre = match pre {
        Ok(p) => p,
        Err(e) => {
            let reason = if om_runtime::ptrace::has_ended(gpid) {
                om_runtime::gang::ENDED.to_string()
            } else {
                format!("node could not send the process: {e}")
            };
            let _ = send(&mut ctl, &Msg::RestoreFailed { reason });
            return Err(e);
        }
    };
    // Rounds of what the guest writes meanwhile follow, while they shrink.
    let dirty = flags.dirty.lock().unwrap_or_else(|p| p.into_inner()).take();
    let pre = transfer::send_precopy(&mut ctl, gpid, pre, image::ReadMode::Pinned, dirty)?;
    drop(held);
    let r = match answer("pre-copy", true) {
        Ok(Msg::PreOk) => Ok(()),
        Ok(Msg::RestoreFailed { reason } | Msg::Refused { reason }) => Err(crate::GuestError::Refused(reason)),
        Ok(m) => Err(wire::WireError::Unexpected(format!("{m:?} instead of an answer to the pre-copy")).into()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        // The tracker serves the next try.
        *flags.dirty.lock().unwrap_or_else(|p| p.into_inner()) = pre.into_dirty();
        return Err(e);
    }
    tracing::info!(
        guest = gpid,
        at_ns = wall_ns(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        bytes = pre.image.data_bytes(),
        rounds = ?pre.round_bytes,
        round_ms = ?pre.round_ms,
        tracked = pre.tracked(),
        "pre-copy home laid out"
    );
    Ok(PreCopied { pre, same: same_files })
}

/// The wall clock in ns (the same on every node), for logs a test or a
/// bench lines up with a program's own readings.
fn wall_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Supervisor {
    /// Whether the process should go home now: a request from home starts
    /// the pre-copy (the calls go on meanwhile); once it is done, yes.
    pub(super) fn asked_home(&mut self) -> bool {
        if self.flags.come_home.swap(false, Ordering::SeqCst) {
            self.start_precopy();
        }
        self.flags.pre_done.load(Ordering::SeqCst)
    }

    /// Start a pre-copy home unless one runs or waits to be taken.
    pub(super) fn start_precopy(&mut self) {
        if !matches!(*self.flags.pre.lock().unwrap_or_else(|p| p.into_inner()), Pre::Idle) {
            return;
        }
        // After failed returns, wait a while before the next (the guest
        // waits in its call meanwhile, if it has one): no pre-copy after
        // pre-copy.
        if let Some(at) = self.retry_at {
            while std::time::Instant::now() < at && !self.flags.exited.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        let mut st = self.flags.pre.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*st, Pre::Idle) {
            return;
        }
        // With the other processes of its gang here, all go, together.
        let attempt = self.gang.as_ref().and_then(|g| g.begin(self.gpid));
        *st = Pre::Running;
        drop(st);
        let (flags, gpid, refs) = (self.flags.clone(), self.gpid, self.refs.clone());
        let spawned = std::thread::Builder::new().name(format!("pre-{gpid}")).spawn(move || {
            let r = precopy(&flags, gpid, &refs, attempt.as_ref()).map(Box::new);
            if let Err(e) = &r {
                tracing::info!(guest = gpid, %e, "the pre-copy home did not complete");
            }
            flags.pre_answers.lock().unwrap_or_else(|p| p.into_inner()).take();
            *flags.pre.lock().unwrap_or_else(|p| p.into_inner()) = Pre::Done(attempt, r);
            flags.pre_done.store(true, Ordering::SeqCst);
            let tid = flags.tid.load(Ordering::SeqCst);
            if tid != 0 {
                let _ = sys::tgkill(sys::getpid(), tid, sys::wake_signal());
            }
            flags.wake_lanes();
        });
        if spawned.is_err() {
            *self.flags.pre.lock().unwrap_or_else(|p| p.into_inner()) =
                Pre::Done(None, Err(crate::GuestError::Refused("cannot start the pre-copy thread".into())));
            self.flags.pre_done.store(true, Ordering::SeqCst);
        }
    }

    /// The outcome of the pre-copy home, once done (one is started if
    /// none runs); it is taken, so the next return starts anew.
    fn precopied(&mut self) -> (Option<Attempt>, Result<Box<PreCopied>, crate::GuestError>) {
        self.start_precopy();
        loop {
            {
                let mut st = self.flags.pre.lock().unwrap_or_else(|p| p.into_inner());
                if matches!(*st, Pre::Done(..)) {
                    self.flags.pre_done.store(false, Ordering::SeqCst);
                    if let Pre::Done(a, r) = std::mem::take(&mut *st) {
                        return (a, r);
                    }
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// The next message of a move home (not an answer to a call).
    pub(super) fn next_other(&mut self) -> Result<Msg, wire::WireError> {
        match (&self.lanes, self.reader.as_mut()) {
            (Some(l), _) => l.others.recv().map_err(|_| wire::WireError::Closed),
            (None, Some(r)) => wire::recv_msg(r),
            (None, None) => Err(wire::WireError::Closed),
        }
    }

    /// A call that could not go out, or was woken, because another lane
    /// takes the process home: park, leaving notification `id` to be
    /// answered with a restart code (it then runs at home). None: the move
    /// failed before it was answered; serve the call again.
    pub(super) fn park_or_home(&mut self, id: u64) -> Option<Flow> {
        self.held_now = false;
        match self.park(Some(id)) {
            lanes::Parked::Done => Some(Flow::Done),
            lanes::Parked::Answered => Some(Flow::Go),
            lanes::Parked::Unanswered => None,
        }
    }

    /// Bring the process home. `pending` is the notification it waits in, if any:
    /// it is answered with a restart code once the stop is requested, so the
    /// call is issued again at home.
    pub(super) fn go_home(&mut self, reason: &str, pending: Option<u64>) -> Flow {
        // With several lanes, one takes the process home; the others park.
        if let Some(l) = self.lanes.clone() {
            if !l.claim(&self.flags.write_lock) {
                return match pending {
                    // Unanswered after a failed move: this call still needs
                    // home; the next try takes it there.
                    Some(id) => self.park_or_home(id).unwrap_or_else(|| self.go_home(reason, Some(id))),
                    None => match self.park(None) {
                        lanes::Parked::Done => Flow::Done,
                        _ => Flow::Go,
                    },
                };
            }
            self.moving = true;
            self.flags.wake_lanes();
            let flow = self.go_home_now(reason, pending);
            self.moving = false;
            l.release(matches!(flow, Flow::Done));
            return flow;
        }
        self.go_home_now(reason, pending)
    }

    pub(super) fn go_home_now(&mut self, reason: &str, pending: Option<u64>) -> Flow {
        loop {
            let flow = self.try_home(reason, pending);
            // A call that needs home and was not answered (the move failed
            // before the guest was stopped) still waits: it goes home at
            // the next try. (Several lanes see to theirs in `go_home`.)
            match pending {
                Some(id)
                    if matches!(flow, Flow::Go)
                        && self.lanes.is_none()
                        && sys::seccomp_id_valid(self.lfd(), id)
                        && !self.flags.exited.load(Ordering::SeqCst) =>
                {
                    continue
                }
                _ => return flow,
            }
        }
    }

    fn try_home(&mut self, reason: &str, pending: Option<u64>) -> Flow {
        tracing::info!(guest = self.gpid, reason, "going home");
        let (attempt, pre) = self.precopied();
        self.attempt = attempt;
        self.flags.come_home.store(false, Ordering::SeqCst);
        self.flags.going_home.store(true, Ordering::SeqCst);
        let flags = self.flags.clone();
        let _traced = flags.ptrace_lock.lock().unwrap_or_else(|p| p.into_inner());
        let sent = pre.and_then(|pre| self.send_home(reason, pending, pre));
        if let (false, Some((_, sync, _))) = (matches!(sent, Ok(true)), self.attempt.take()) {
            // One that ended leaves the gang's return when its supervisor
            // ends (`AwayGang::leave`); the others go on without it.
            if !om_runtime::ptrace::has_ended(self.gpid) {
                sync.fail(&format!("process {} could not go home", self.home_pid));
            }
        }
        match sent {
            Ok(true) => {
                self.went_home = true;
                self.retry_at = None;
                let _ = sys::kill(self.gpid, libc::SIGKILL);
                let _ = sys::waitpid(self.gpid, libc::__WALL);
                tracing::info!(guest = self.gpid, "process is home");
                Flow::Done
            }
            Ok(false) => {
                tracing::warn!("home could not take the process back; it keeps running here");
                self.failed_home();
                self.flags.going_home.store(false, Ordering::SeqCst);
                Flow::Go
            }
            Err(e) => {
                if let crate::GuestError::Trace(om_runtime::ptrace::TraceError::Died { status, .. }) = &e {
                    if *status >= 0 {
                        *self.flags.reaped.lock().unwrap_or_else(|p| p.into_inner()) = Some(*status);
                    }
                }
                if om_runtime::ptrace::has_ended(self.gpid) {
                    // It ended on its way: the helper reports its exit.
                    tracing::info!(guest = self.gpid, %e, "the process ended as it was going home");
                } else {
                    tracing::warn!(%e, "the process could not be sent home; it keeps running here");
                }
                self.failed_home();
                self.flags.going_home.store(false, Ordering::SeqCst);
                Flow::Go
            }
        }
    }

    /// Meet the other members of the gang going home with it at point `at`.
    fn meet(&self, at: u32) -> Result<(), crate::GuestError> {
        match &self.attempt {
            Some((_, sync, _)) => sync.arrive(at).map_err(crate::GuestError::Refused),
            None => Ok(()),
        }
    }

    /// A return home failed: the next try waits 0.2 s, then twice as long
    /// each time, up to 10 s.
    pub(super) fn failed_home(&mut self) {
        self.home_failures = (self.home_failures + 1).min(16);
        let wait = (100u64 << self.home_failures).min(10_000);
        self.retry_at = Some(std::time::Instant::now() + std::time::Duration::from_millis(wait));
    }

    /// After the pre-copy (laid out at home while the guest ran): stop the
    /// guest, capture it, and send what changed, on the call link.
    pub(super) fn send_home(
        &mut self,
        reason: &str,
        pending: Option<u64>,
        mut pre: Box<PreCopied>,
    ) -> Result<bool, crate::GuestError> {
        let r = self.send_home_after(reason, pending, &mut pre);
        if !matches!(r, Ok(true)) {
            // The tracker serves the next try.
            *self.flags.dirty.lock().unwrap_or_else(|p| p.into_inner()) = pre.pre.into_dirty();
        }
        r
    }

    fn send_home_after(
        &mut self,
        reason: &str,
        pending: Option<u64>,
        pre: &mut PreCopied,
    ) -> Result<bool, crate::GuestError> {
        self.send(&Msg::GoingHome { reason: reason.to_string() })?;
        // Home now expects the image: a failure before it is all sent is
        // announced (RestoreFailed in its place), and the guest runs on here.
        self.images_sent = false;
        match self.send_images(pre, pending) {
            Err(e) if !self.images_sent => {
                let reason = if om_runtime::ptrace::has_ended(self.gpid) {
                    om_runtime::gang::ENDED.to_string()
                } else {
                    tracing::warn!(%e, "cannot send the process home; telling home");
                    format!("node could not send the process: {e}")
                };
                let _ = self.send(&Msg::RestoreFailed { reason });
                Err(e)
            }
            r => r,
        }
    }

    pub(super) fn send_images(&mut self, pc: &mut PreCopied, pending: Option<u64>) -> Result<bool, crate::GuestError> {
        let PreCopied { pre, same } = pc;
        let same = |p: &str| same.iter().any(|q| q == p);
        // A gang freezes together once every member is pre-copied.
        self.meet(1)?;
        // Every notification a thread waits in is answered with a restart
        // code once that thread was asked to stop (only then does the kernel
        // restart the call, and the thread stops): this lane's, and those
        // the parked lanes left. The calls are issued again, and run at
        // home, or here if the move fails.
        if let Some(l) = self.lanes.clone() {
            let flags = self.flags.clone();
            let wake = || flags.wake_lanes();
            let ended = || flags.exited.load(Ordering::SeqCst);
            if !l.wait_parked(&wake, &ended) {
                return Err(crate::GuestError::Refused(om_runtime::gang::ENDED.into()));
            }
        }
        let (own_lfd, own_tid, lanes) = (self.lfd(), self.lane.tid, self.lanes.clone());
        let mut answer = |tid: i32| {
            if let (Some(id), true) = (pending, tid == own_tid) {
                let _ = sys::seccomp_send(own_lfd, id, ERESTARTNOINTR, false);
            }
            if let Some(l) = &lanes {
                l.answer_held(tid, ERESTARTNOINTR);
            }
        };
        let frozen = std::time::Instant::now();
        let mut threads = om_runtime::ptrace::seize_all_then(self.gpid, true, &mut answer)?;
        let r = self.send_final(&mut threads, &same, pre);
        if matches!(r, Ok(true)) {
            tracing::info!(home_freeze_ms = frozen.elapsed().as_secs_f64() * 1e3, "sent home");
        }
        if !matches!(r, Ok(true)) {
            for t in threads {
                let _ = t.detach();
            }
        }
        r
    }

    pub(super) fn send_final(
        &mut self,
        threads: &mut [Tracee],
        same: &dyn Fn(&str) -> bool,
        pre: &mut transfer::PreCopy,
    ) -> Result<bool, crate::GuestError> {
        // Shared pages are read once every member is frozen.
        self.meet(2)?;
        let mut cap = image::capture(threads, same)?;
        self.refs.lock().unwrap_or_else(|p| p.into_inner()).mark(&mut cap.image);
        if let Some((_, sync, gang)) = &self.attempt {
            // Every member is frozen: those that ended meanwhile have left.
            cap.image.gang_size = sync.size() as u32;
            if let Err(why) = image::keep_owned(&mut cap.image, self.gpid, gang) {
                let _ = image::rollback(&mut threads[0], cap.scratch, &cap.image.timers);
                return Err(crate::GuestError::Refused(why));
            }
        }
        transfer::log_shared(self.gpid, &cap.image, "captured");
        // Home knows the threads by their home ids.
        for th in cap.image.threads.iter_mut() {
            match self.home_tid_of(th.tid) {
                Some(h) => th.tid = h,
                None => {
                    let _ = image::rollback(&mut threads[0], cap.scratch, &cap.image.timers);
                    return Err(crate::GuestError::Refused(format!(
                        "thread {} started away, which home does not know",
                        th.tid
                    )));
                }
            }
        }
        let t = &mut threads[0];
        // The guest runs under a uid, group and session of its own: the
        // identity the next node answers with is home's.
        cap.image.flags = cap.image.flags.with_identity_of(&self.proc_flags);
        cap.image.creds = self.all_creds.0.clone();
        cap.image.thread_creds =
            self.all_creds.1.iter().filter(|t| cap.image.threads.iter().any(|th| th.tid == t.tid)).cloned().collect();
        (cap.image.pgid, cap.image.sid) = (self.pgid, self.sid);
        let sent_ok = transfer::prune(self.gpid, &mut cap.image, pre, image::ReadMode::Pinned)
            .map_err(crate::GuestError::from)
            .and_then(|_| {
                let flags = self.flags.clone();
                let _g = flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
                transfer::send_image(&mut self.stream, self.gpid, &cap.image, image::ReadMode::Pinned)
                    .map_err(crate::GuestError::from)
            });
        self.images_sent = sent_ok.is_ok();
        if let Err(e) = sent_ok {
            let _ = image::rollback(t, cap.scratch, &cap.image.timers);
            return Err(e);
        }
        loop {
            match self.next_other()? {
                Msg::HomeOk => return Ok(true),
                Msg::RestoreFailed { reason } => {
                    tracing::warn!(reason, "home failed to rebuild the process");
                    image::rollback(t, cap.scratch, &cap.image.timers)?;
                    return Ok(false);
                }
                _ => {}
            }
        }
    }
}
