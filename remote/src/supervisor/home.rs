//! Going home: the process's image sent back to the deputy, with the
//! other lanes held.

use super::*;

impl Supervisor {
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
        // After failed returns, wait a while before the next (the guest
        // waits in its call meanwhile): no pre-copy after pre-copy.
        if let Some(at) = self.retry_at {
            while std::time::Instant::now() < at && !self.flags.exited.load(Ordering::SeqCst) {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        self.flags.come_home.store(false, Ordering::SeqCst);
        self.flags.going_home.store(true, Ordering::SeqCst);
        tracing::info!(guest = self.gpid, reason, "going home");
        // With the other processes of its gang here, all go, together.
        self.attempt = self.gang.as_ref().and_then(|g| g.begin(self.gpid));
        let flags = self.flags.clone();
        let _traced = flags.ptrace_lock.lock().unwrap_or_else(|p| p.into_inner());
        let sent = self.send_home(reason, pending);
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

    /// Pre-copy the guest home while it runs (or waits in the call that sends
    /// it home), then stop it, capture it, and send what changed.
    pub(super) fn send_home(&mut self, reason: &str, pending: Option<u64>) -> Result<bool, crate::GuestError> {
        self.send(&Msg::GoingHome { reason: reason.to_string() })?;
        let gang = self.attempt.as_ref().map_or((0, 1), |(token, sync, _)| (*token, sync.size() as u32));
        self.send(&transfer::offer(self.gpid, 0, 0, -1.0, gang))?;
        let reopen = match self.next_other()? {
            Msg::OfferOk { reopen } => reopen,
            Msg::Refused { reason } => return Err(crate::GuestError::Refused(reason)),
            m => return Err(wire::WireError::Unexpected(format!("{m:?} instead of an answer to the offer")).into()),
        };
        // Home now expects the images: a failure before they are all sent is
        // announced (RestoreFailed in their place), and the guest runs on here.
        self.images_sent = false;
        match self.send_images(reopen, pending) {
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

    pub(super) fn send_images(&mut self, reopen: Vec<bool>, pending: Option<u64>) -> Result<bool, crate::GuestError> {
        let files = image::mapped_files(self.gpid);
        let same = |p: &str| files.iter().zip(&reopen).any(|((q, _), ok)| *ok && q == p);
        let mut pre = image::pre_image(self.gpid, &same)?;
        self.refs.lock().unwrap_or_else(|p| p.into_inner()).mark(&mut pre);
        if let Some((_, _, gang)) = &self.attempt {
            image::keep_owned(&mut pre, self.gpid, gang).map_err(crate::GuestError::Refused)?;
        }
        let sent = {
            let flags = self.flags.clone();
            let _g = flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            transfer::send_pre_image(&mut self.stream, self.gpid, &pre, image::ReadMode::Pinned)?
        };
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
        let r = self.send_final(&mut threads, &same, &pre, &sent);
        if matches!(r, Ok(true)) {
            tracing::info!(
                home_freeze_ms = frozen.elapsed().as_secs_f64() * 1e3,
                bytes = pre.data_bytes(),
                "sent home"
            );
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
        pre: &Image,
        sent: &image::PageHashes,
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
        let sent_ok = image::prune_unchanged(self.gpid, &mut cap.image, pre, sent, image::ReadMode::Pinned)
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
