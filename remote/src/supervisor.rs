//! The supervisor of one guest: receives its trapped calls, answers the
//! emulated ones, forwards the rest to the deputy, relays signals from home,
//! and sends the process home when a call can only run there.

use crate::lanes;
use om_runtime::image::{self, Creds, Image};
use om_runtime::link::Link;
use om_runtime::marshal::{self, GO_HOME, MAX_IO, MAX_PATH};
use om_runtime::procfs;
use om_runtime::ptrace::Tracee;
use om_runtime::sys::{self, SeccompNotif};
use om_runtime::syscalls::{self, Arg, Class, Len};
use om_runtime::transfer;
use om_runtime::wire::{self, Frame, Msg, SysReq, SysRet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};

/// (address, length) pieces of a readv/writev call.
type Iovecs = Vec<(u64, usize)>;

const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;

pub struct Supervisor {
    /// Calls to the deputy (written here) and their answers (read through
    /// `reader`: this thread is the link's only reader, so a buffer is safe and
    /// saves a read per frame).
    stream: Link,
    /// None when the guest has several threads: the lanes' router reads.
    reader: Option<std::io::BufReader<Link>>,
    /// Signals and requests from home, read by the helper thread.
    ctl: Option<Link>,
    gpid: i32,
    /// The thread this supervisor serves (its lane), and the other threads'
    /// lanes until `run` starts them.
    lane: Lane,
    spare: Vec<Lane>,
    /// Which lane this is (0: the leader's).
    lane_no: usize,
    /// Every thread: (guest tid, home tid).
    tids: Arc<Vec<(i32, i32)>>,
    /// With several threads: what the lanes share.
    lanes: Option<Arc<lanes::Shared>>,
    /// This lane is taking the process home.
    moving: bool,
    /// The last request was not sent: the process is going home.
    held_now: bool,
    home_pid: i32,
    pgid: i32,
    sid: i32,
    creds: Creds,
    /// prctl settings as home had them (the identity part is answered from here).
    proc_flags: om_runtime::image::ProcFlags,
    next_id: u64,
    flags: Arc<Flags>,
    /// Whether a return home has sent all its images (home then answers).
    images_sent: bool,
    /// Failed returns home in a row, and when the next may start.
    home_failures: u32,
    retry_at: Option<std::time::Instant>,
    /// Reused buffers for bulk call data, out and back.
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    /// Writes answered before the deputy ran them (write-behind), oldest
    /// first: (request id, fd, bytes).
    behind: std::collections::VecDeque<(u64, i32, usize)>,
    behind_bytes: usize,
    /// The fd the last forwarded call wrote whole, and the room the deputy
    /// reported after it (`marshal::WRITE_ROOM`): only a write to the same
    /// fd that follows it, with nothing else forwarded or delivered between,
    /// may go behind, and only as far as that room (less what is behind).
    write_run: Option<(i32, i64)>,
    /// What the last read of an fd only this process reads peeked after its
    /// bytes (`marshal::READ_AHEAD`): the next reads of that fd are answered
    /// from it, with nothing else forwarded or delivered between.
    ahead: Option<ReadAhead>,
}

/// One thread of the guest: its own filter's listener, its id here and at home.
struct Lane {
    listener: OwnedFd,
    tid: i32,
    home_tid: i32,
}

/// Bytes that follow in a stream, peeked at home and still there.
struct ReadAhead {
    fd: i32,
    data: Vec<u8>,
    /// How much of it the guest has read (and the deputy was told to take).
    pos: usize,
    /// Whether it was all the stream held then (less than `AHEAD_MAX`).
    whole: bool,
}

/// State shared with the helper thread.
#[derive(Default)]
struct Flags {
    come_home: AtomicBool,
    /// The helper reaped the guest and told home.
    exited: AtomicBool,
    /// The supervisor is taking the guest home: its end is not an exit.
    going_home: AtomicBool,
    /// The supervisor loop has returned.
    done: AtomicBool,
    /// The wait status of a guest that died while the supervisor traced it
    /// (its wait reaped it), for the helper to report.
    reaped: Mutex<Option<i32>>,
    /// Signals from home with their siginfo, for the supervisor to have the
    /// guest queue to itself (only then does the siginfo arrive whole).
    signals: Mutex<Vec<(i32, Vec<u8>, i32)>>,
    /// The stop signal the guest was stopped for with SIGSTOP (its default
    /// action, which the kernel drops in the guest's orphaned group), for
    /// the helper to report as the stop's signal.
    stop_sig: Mutex<Option<i32>>,
    tid: AtomicI32,
    /// Every lane's thread (they are all woken).
    lane_tids: Mutex<Vec<i32>>,
    /// Signals the process sends its own threads, for the lane that queues
    /// each (see [`Supervisor::deliver_own`]).
    lane_signals: Mutex<Vec<LaneSignal>>,
    /// Whole frames on `stream` from either thread.
    write_lock: Mutex<()>,
    /// Held while the supervisor traces the guest, so the helper's waitid
    /// never takes a ptrace event meant for it.
    ptrace_lock: Mutex<()>,
}

impl Flags {
    /// Wake every lane (out of RECV, poll or a wait) to look at the flags.
    fn wake_lanes(&self) {
        let me = sys::gettid();
        for &tid in self.lane_tids.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if tid != me {
                let _ = sys::tgkill(sys::getpid(), tid, sys::wake_signal());
            }
        }
    }
}

/// A signal one thread sends its process or another thread, waiting for
/// the lane of thread `by` (home tid) to queue it with the process's own
/// siginfo: to its own thread, or (the leader) to the process (`to` None).
struct LaneSignal {
    by: i32,
    to: Option<i32>,
    sig: i32,
    info: Vec<u8>,
}

/// Every guest this node hosts, for `expel`.
static LIVE: Mutex<Vec<std::sync::Weak<Flags>>> = Mutex::new(Vec::new());

fn register() -> Arc<Flags> {
    let f = Arc::new(Flags::default());
    let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(&f));
    f
}

/// Send every guest on this node home. Returns how many were asked.
pub fn expel() -> usize {
    let all: Vec<Arc<Flags>> = {
        let live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().filter_map(|w| w.upgrade()).filter(|f| !f.done.load(Ordering::SeqCst)).collect()
    };
    for f in &all {
        f.come_home.store(true, Ordering::SeqCst);
    }
    // Wake each supervisor until it has taken the request (it may be in a call).
    for _ in 0..400 {
        let mut waiting = false;
        for f in &all {
            if f.come_home.load(Ordering::SeqCst) && !f.done.load(Ordering::SeqCst) {
                waiting = true;
                let tid = f.tid.load(Ordering::SeqCst);
                if tid != 0 {
                    let _ = sys::tgkill(sys::getpid(), tid, sys::wake_signal());
                }
            }
        }
        if !waiting {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    all.len()
}

/// What the guest uses: run plus run-queue wait and run alone (ns), and
/// resident bytes.
fn usage(gpid: i32) -> Option<(u64, u64, u64)> {
    let (run, wait) = procfs::process_schedstat(gpid)?;
    Some((run + wait, run, procfs::rss(gpid)?))
}

enum Flow {
    Go,
    /// The guest is gone (exited, killed, or went home).
    Done,
}

impl Supervisor {
    /// `listeners`: each thread's (guest tid, listener), in image order.
    pub fn new(
        stream: Link,
        ctl: Link,
        gpid: i32,
        listeners: Vec<(i32, OwnedFd)>,
        img: &Image,
    ) -> std::io::Result<Supervisor> {
        let reader = std::io::BufReader::with_capacity(1 << 16, stream.try_clone()?);
        let mut spare: Vec<Lane> = listeners
            .into_iter()
            .zip(&img.threads)
            .map(|((tid, listener), th)| Lane { listener, tid, home_tid: th.tid })
            .collect();
        let tids = Arc::new(spare.iter().map(|l| (l.tid, l.home_tid)).collect());
        if spare.is_empty() {
            return Err(std::io::Error::other("a guest without threads"));
        }
        let lane = spare.remove(0);
        Ok(Supervisor {
            stream,
            reader: Some(reader),
            ctl: Some(ctl),
            gpid,
            lane,
            spare,
            lane_no: 0,
            tids,
            lanes: None,
            moving: false,
            held_now: false,
            home_pid: img.pid,
            pgid: img.pgid,
            sid: img.sid,
            creds: img.creds.clone(),
            proc_flags: img.flags,
            next_id: 1,
            flags: register(),
            images_sent: false,
            home_failures: 0,
            retry_at: None,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            behind: std::collections::VecDeque::new(),
            behind_bytes: 0,
            write_run: None,
            ahead: None,
        })
    }

    /// Serve the guest's calls: block in RECV (the fastest wake-up, with
    /// SYNC_WAKE_UP); the helper thread wakes us with a signal when home asks
    /// for something or the guest ends.
    pub fn run(mut self) {
        self.flags.tid.store(sys::gettid(), Ordering::SeqCst);
        self.flags.lane_tids.lock().unwrap_or_else(|p| p.into_inner()).push(sys::gettid());
        let (Some(ctl), Ok(out)) = (self.ctl.take(), self.stream.try_clone()) else {
            return self.lost("cannot set up the helper");
        };
        let (flags, gpid, tids) = (self.flags.clone(), self.gpid, self.tids.clone());
        if std::thread::Builder::new()
            .name(format!("guest-{gpid}"))
            .spawn(move || helper(ctl, out, gpid, flags, tids))
            .is_err()
        {
            return self.lost("cannot start the helper thread");
        }
        // Several threads: a lane each, and a router for the link.
        let mut others = Vec::new();
        if !self.spare.is_empty() {
            let Some(reader) = self.reader.take() else { return self.lost("no link reader") };
            let shared = match lanes::Shared::start(self.spare.len() + 1, reader, gpid) {
                Ok(s) => s,
                Err(_) => return self.lost("cannot start the lanes' router"),
            };
            self.lanes = Some(shared);
            for (k, lane) in std::mem::take(&mut self.spare).into_iter().enumerate() {
                let sib = match self.sibling(lane, k + 1) {
                    Ok(s) => s,
                    Err(_) => return self.lost("cannot start a lane"),
                };
                let spawned = std::thread::Builder::new().name(format!("lane-{gpid}-{}", k + 1)).spawn(move || {
                    let mut sib = sib;
                    sib.flags.lane_tids.lock().unwrap_or_else(|p| p.into_inner()).push(sys::gettid());
                    sib.serve();
                });
                match spawned {
                    Ok(h) => others.push(h),
                    Err(_) => return self.lost("cannot start a lane"),
                }
            }
        }
        self.serve();
        for h in others {
            let _ = h.join();
        }
        // Writes the guest was told are done are done before the link goes
        // (home reads the guest's end only after them).
        self.settle_behind();
        self.flags.done.store(true, Ordering::SeqCst);
    }

    /// A supervisor for another thread's lane, sharing this one's link,
    /// flags and lanes.
    fn sibling(&self, lane: Lane, lane_no: usize) -> std::io::Result<Supervisor> {
        Ok(Supervisor {
            stream: self.stream.try_clone()?,
            reader: None,
            ctl: None,
            gpid: self.gpid,
            lane,
            spare: Vec::new(),
            lane_no,
            tids: self.tids.clone(),
            lanes: self.lanes.clone(),
            moving: false,
            held_now: false,
            home_pid: self.home_pid,
            pgid: self.pgid,
            sid: self.sid,
            creds: self.creds.clone(),
            proc_flags: self.proc_flags,
            next_id: 1,
            flags: self.flags.clone(),
            images_sent: false,
            home_failures: 0,
            retry_at: None,
            inbuf: Vec::new(),
            outbuf: Vec::new(),
            behind: std::collections::VecDeque::new(),
            behind_bytes: 0,
            write_run: None,
            ahead: None,
        })
    }

    /// Serve this lane's thread until the guest is gone (or, for a lane of
    /// several, until its thread ends). Alone, block in RECV (the fastest
    /// wake-up, with SYNC_WAKE_UP); with other lanes, poll first, which
    /// also tells when the thread has ended. The helper wakes every lane
    /// with a signal when home asks for something or the guest ends.
    fn serve(&mut self) {
        loop {
            if self.flags.exited.load(Ordering::SeqCst)
                || self.lanes.as_ref().is_some_and(|l| l.gone.load(Ordering::SeqCst))
            {
                break;
            }
            if self.lanes.as_ref().is_some_and(|l| l.hold.load(Ordering::SeqCst)) && !self.moving {
                match self.park(None) {
                    lanes::Parked::Done => break,
                    _ => continue,
                }
            }
            if self.flags.come_home.load(Ordering::SeqCst) {
                if let Flow::Done = self.go_home("asked to come home", None) {
                    break;
                }
                continue;
            }
            if self.lane_no == 0 {
                self.deliver_signals(None);
            }
            if self.has_own_signals() {
                self.deliver_own(None);
            }
            if self.lanes.is_some() {
                match sys::poll(&[(self.lfd(), libc::POLLIN)], -1) {
                    Ok(r) if r[0] & libc::POLLIN != 0 => {}
                    Ok(r) if r[0] & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 => break,
                    _ => continue,
                }
            }
            match sys::seccomp_recv(self.lfd()) {
                Ok(Some(n)) => {
                    if self.lanes.as_ref().is_some_and(|l| l.hold.load(Ordering::SeqCst)) && !self.moving {
                        match self.park(Some(n.id)) {
                            lanes::Parked::Done => break,
                            lanes::Parked::Answered => continue,
                            lanes::Parked::Unanswered => {}
                        }
                    }
                    if let Flow::Done = self.handle(&n) {
                        break;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(%e, "notification receive failed");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        if let Some(l) = &self.lanes {
            l.leave();
        }
    }

    /// A signal is now pending for thread `to` (a guest tid; None: the
    /// process): if its lane waits in a call at home, the deputy wakes it,
    /// so the call restarts or fails as the kernel decides, as natively.
    fn wake_lane(&mut self, to: Option<i32>) {
        if self.lanes.is_none() {
            return;
        }
        let lane = match to {
            Some(t) => match self.home_tid_of(t) {
                Some(h) => h,
                None => return,
            },
            None => 0,
        };
        let _g = self.flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        if self.lanes.as_ref().is_some_and(|l| l.hold.load(Ordering::SeqCst)) {
            return;
        }
        let _ = wire::send(&mut self.stream, &Msg::Wake { lane });
    }

    /// Park this lane while another takes the process home, leaving it
    /// notification `pending` to answer.
    fn park(&mut self, pending: Option<u64>) -> lanes::Parked {
        let Some(l) = self.lanes.clone() else { return lanes::Parked::Unanswered };
        let flags = self.flags.clone();
        l.park((self.lfd(), self.lane.tid), pending, &|| flags.exited.load(Ordering::SeqCst))
    }

    /// The listener of this lane's thread.
    fn lfd(&self) -> std::os::fd::RawFd {
        self.lane.listener.as_raw_fd()
    }

    /// Whether the process has several threads: writes behind and reads
    /// ahead assume one stream of calls.
    fn threaded(&self) -> bool {
        self.tids.len() > 1
    }

    /// The home tid of the guest thread `tid`.
    fn home_tid_of(&self, tid: i32) -> Option<i32> {
        self.tids.iter().find(|l| l.0 == tid).map(|l| l.1)
    }

    /// The guest tid of home thread id `home_tid` of this process.
    fn guest_tid_of(&self, home_tid: i32) -> Option<i32> {
        self.tids.iter().find(|l| l.1 == home_tid).map(|l| l.0)
    }

    /// Home is unreachable: the guest cannot go on without its files.
    fn lost(self, why: &str) {
        tracing::warn!(guest = self.gpid, why, "link to home lost; killing the guest");
        let _ = sys::kill(self.gpid, libc::SIGKILL);
    }

    fn send(&mut self, m: &Msg) -> Result<(), wire::WireError> {
        self.ahead = None;
        if !self.settle_behind() {
            return Err(wire::WireError::Closed);
        }
        let _g = self.flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
        wire::send(&mut self.stream, m)
    }

    /// Does the guest have a signal pending that it does not block?
    fn signal_pending(&self) -> bool {
        let path = format!("/proc/{}/task/{}/status", self.gpid, self.lane.tid);
        let Ok(st) = std::fs::read_to_string(path) else { return false };
        let f = |k: &str| procfs::hex_mask(&procfs::status_field_in(&st, k).unwrap_or_default());
        (f("SigPnd") | f("ShdPnd")) & !f("SigBlk") != 0
    }

    /// Signals from home that wait for [`Self::deliver_signals`], sent
    /// plainly now: the guest waits in a call at the deputy, where it cannot
    /// be stopped, and the call's restart depends on them. (Their sender
    /// then reads as this node's daemon.)
    fn send_signals_plainly(&mut self) {
        self.write_run = None;
        self.ahead = None;
        let queued = std::mem::take(&mut *self.flags.signals.lock().unwrap_or_else(|p| p.into_inner()));
        for (sig, _, tid) in queued {
            self.send_plainly(sig, tid);
        }
    }

    /// Whether a signal waits for this lane to queue it.
    fn has_own_signals(&self) -> bool {
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
    fn deliver_own(&mut self, pending: Option<u64>) {
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
    fn queue_in_thread(&mut self, tid: i32, pending: Option<u64>, items: &[(Option<i32>, i32, Vec<u8>)]) {
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
    fn send_plainly(&self, sig: i32, tid: i32) {
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
    fn deliver_signals(&mut self, pending: Option<u64>) {
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

    fn reply(&self, id: u64, val: i64) {
        let _ = sys::seccomp_send(self.lfd(), id, val, false);
    }

    fn handle(&mut self, n: &SeccompNotif) -> Flow {
        let nr = n.data.nr as u32;
        // Asked to come home: go before forwarding anything (a call restarted
        // after the deputy was woken would otherwise wait there again).
        if self.flags.come_home.load(Ordering::SeqCst) {
            return self.go_home("asked to come home", Some(n.id));
        }
        let (a, home) = (n.data.args, self.home_pid as u64);
        // A signal to the process itself, or to one of its threads (by home ids).
        let thread = |t: u64| i32::try_from(t).ok().and_then(|t| self.guest_tid_of(t));
        let own = match nr {
            62 if a[0] == home => Some((a[1] as i32, SI_USER, None)),
            200 => thread(a[0]).map(|t| (a[1] as i32, SI_TKILL, Some(t))),
            234 if a[0] == home => thread(a[1]).map(|t| (a[2] as i32, SI_TKILL, Some(t))),
            _ => None,
        };
        if let Some((sig, code, to)) = own {
            let flow = self.self_signal(n.id, sig, code, to);
            if sig != 0 && to != Some(self.lane.tid) {
                self.wake_lane(to);
            }
            return flow;
        }
        // /dev/tty is the controlling terminal of whoever opens it: only the
        // process itself, at home, has that terminal.
        let path_arg = match nr {
            2 => Some(a[0]),
            257 | 437 => Some(a[1]),
            _ => None,
        };
        if path_arg.and_then(|at| self.read_mem(at, 9)).is_some_and(|p| p == b"/dev/tty\0") {
            return self.go_home("opening /dev/tty runs at home", Some(n.id));
        }
        match syscalls::class(nr) {
            Class::Emulated if nr == libc::SYS_prctl as u32 => self.prctl(n),
            Class::Emulated => match self.emulate(nr, n) {
                Some(v) => {
                    self.reply(n.id, v);
                    Flow::Go
                }
                None => self.forward(n),
            },
            Class::Forward if nr == 46 || nr == 47 => self.forward_msg(n),
            Class::Forward => self.forward(n),
            Class::Local if nr == libc::SYS_mmap as u32 => self.mmap_file(n),
            Class::Local if nr == libc::SYS_exit as u32 || nr == libc::SYS_futex as u32 => {
                if self.threaded() {
                    let why = if nr == libc::SYS_exit as u32 {
                        "a thread ends at home (its robust futexes name its home tid)"
                    } else {
                        "priority-inheritance futexes run at home (their words hold home tids)"
                    };
                    self.go_home(why, Some(n.id))
                } else {
                    let _ = sys::seccomp_send(self.lfd(), n.id, 0, true);
                    Flow::Go
                }
            }
            Class::Local if nr == libc::SYS_timer_create as u32 => {
                let ev = if a[1] == 0 { None } else { self.read_mem(a[1], 16) };
                let threads = if self.threaded() { 2 } else { 1 };
                // An unreadable sigevent: the kernel here answers EFAULT as home's would.
                match om_runtime::timers::made_at_home(a[0] as i32, ev.as_deref(), threads) {
                    Some(why) if a[1] == 0 || ev.is_some() => self.go_home(&why, Some(n.id)),
                    _ => {
                        let _ = sys::seccomp_send(self.lfd(), n.id, 0, true);
                        Flow::Go
                    }
                }
            }
            Class::Local if nr == libc::SYS_sched_getaffinity as u32 || nr == libc::SYS_sched_setaffinity as u32 => {
                self.affinity(n)
            }
            Class::Local | Class::Home => self.go_home(&format!("{} runs at home", syscalls::name(nr)), Some(n.id)),
        }
    }

    /// A file mapping (the filter lets anonymous ones through). A private or
    /// read-only mapping of a file this node has identical to home's is served here: the
    /// local file is installed in the guest at the home fd's number and the
    /// kernel runs the mmap. Anything else runs at home.
    fn mmap_file(&mut self, n: &SeccompNotif) -> Flow {
        let a = n.data.args;
        let fd = a[4] as i32;
        if a[3] & libc::MAP_ANONYMOUS as u64 != 0 {
            // Private anonymous maps never trap; a shared one must live where
            // a later fork can share it.
            return self.go_home("shared anonymous memory lives at home", Some(n.id));
        }
        if fd < 0 {
            self.reply(n.id, -(libc::EBADF as i64));
            return Flow::Go;
        }
        // A read-only shared mapping of an identical file reads the same bytes
        // here (the local file is opened read-only); a writable one runs at home.
        let map_type = a[3] & 0x0f; // MAP_TYPE: a field, not bits (MAP_SHARED_VALIDATE = 3)
        let shared = map_type == libc::MAP_SHARED as u64 || map_type == libc::MAP_SHARED_VALIDATE as u64;
        if shared && a[2] & libc::PROT_WRITE as u64 != 0 {
            return self.go_home("writable shared file mappings run at home", Some(n.id));
        }
        let file = loop {
            match self.fd_ident(fd) {
                Ok(f) => break f,
                Err(true) => match self.park_or_home(n.id) {
                    Some(flow) => return flow,
                    None => continue,
                },
                Err(false) => {
                    let _ = sys::kill(self.gpid, libc::SIGKILL);
                    return Flow::Go;
                }
            }
        };
        let Some((path, id)) = file else {
            return self.go_home("mapping something that is not a regular file runs at home", Some(n.id));
        };
        if image::file_id(&path).as_ref() != Some(&id) {
            return self.go_home("mapping a file this node does not have runs at home", Some(n.id));
        }
        let local = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(_) => return self.go_home("mapping a file this node cannot open runs at home", Some(n.id)),
        };
        let lfd = self.lfd();
        match sys::seccomp_addfd_at(lfd, n.id, local.as_raw_fd(), fd) {
            Ok(_) => {
                let _ = sys::seccomp_send(lfd, n.id, 0, true);
                Flow::Go
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Flow::Go,
            Err(_) => self.go_home("mapping a file runs at home", Some(n.id)),
        }
    }

    /// Identity and self-signal calls. `None`: not answerable here, forward it.
    fn emulate(&mut self, nr: u32, n: &SeccompNotif) -> Option<i64> {
        let a = n.data.args;
        let home = self.home_pid as u64;
        let c = &self.creds;
        Some(match nr {
            39 => self.home_pid as i64,
            186 => self.home_tid_of(n.pid as i32).unwrap_or(self.home_pid) as i64,
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

            _ => return None,
        })
    }

    /// A write to a pipe or socket with no reader fails with EPIPE and, unless
    /// MSG_NOSIGNAL, raises SIGPIPE in the writer. The deputy ignores SIGPIPE,
    /// so the guest gets it here, pending when the call returns, as natively.
    fn sigpipe_if(&self, nr: u32, ret: i64, args: [u64; 6]) {
        if ret != -(libc::EPIPE as i64) {
            return;
        }
        let raises = match nr {
            // write, pwrite64, writev, pwritev, sendfile, splice, tee, copy_file_range
            1 | 18 | 20 | 296 | 40 | 275 | 276 | 326 => true,
            // sendto, sendmsg: unless MSG_NOSIGNAL
            44 => args[3] & libc::MSG_NOSIGNAL as u64 == 0,
            46 => args[2] & libc::MSG_NOSIGNAL as u64 == 0,
            _ => false,
        };
        if raises {
            let _ = sys::tgkill(self.gpid, self.lane.tid, libc::SIGPIPE);
        }
    }

    /// sched_getaffinity or sched_setaffinity of a thread named by its home
    /// tid (or the home pid: the leader): done here on the guest's thread,
    /// which the process may do natively. Another process's goes home.
    fn affinity(&mut self, n: &SeccompNotif) -> Flow {
        let (nr, a) = (n.data.nr as u32, n.data.args);
        let Some(tid) = i32::try_from(a[0]).ok().and_then(|t| self.guest_tid_of(t)) else {
            return self.go_home("the CPU placement of another process runs at home", Some(n.id));
        };
        let len = (a[1] as usize).min(1 << 16);
        let r = if nr == libc::SYS_sched_getaffinity as u32 {
            match sys::sched_getaffinity(tid, len) {
                Ok(mask) => match sys::process_vm_writev(self.gpid, &mask, &[(a[2], mask.len())]) {
                    Ok(w) if w == mask.len() => mask.len() as i64,
                    _ => -(libc::EFAULT as i64),
                },
                Err(e) => -(e.raw_os_error().unwrap_or(libc::EINVAL) as i64),
            }
        } else {
            match self.read_mem(a[2], len) {
                Some(mask) => match sys::sched_setaffinity(tid, &mask) {
                    Ok(()) => 0,
                    Err(e) => -(e.raw_os_error().unwrap_or(libc::EINVAL) as i64),
                },
                None => -(libc::EFAULT as i64),
            }
        };
        self.reply(n.id, r);
        Flow::Go
    }

    /// The prctl settings that are part of the process's identity (the
    /// filter lets the others run in the guest): read from what home had;
    /// changed only at home.
    fn prctl(&mut self, n: &SeccompNotif) -> Flow {
        let a = n.data.args;
        let f = &self.proc_flags;
        let v = match a[0] as i32 {
            libc::PR_GET_DUMPABLE => f.dumpable as i64,
            libc::PR_GET_NO_NEW_PRIVS => f.no_new_privs as i64,
            libc::PR_GET_KEEPCAPS => f.keepcaps as i64,
            libc::PR_GET_SECUREBITS => f.securebits as i64,
            libc::PR_GET_PDEATHSIG => {
                let sig = (f.pdeathsig as u32).to_le_bytes();
                match sys::process_vm_writev(self.gpid, &sig, &[(a[1], 4)]) {
                    Ok(4) => 0,
                    _ => -libc::EFAULT as i64,
                }
            }
            _ => return self.go_home("this prctl runs at home", Some(n.id)),
        };
        self.reply(n.id, v);
        Flow::Go
    }

    /// kill, tkill or tgkill of the process itself (call `id`): to the
    /// process, or to its thread `to` (a guest tid). As natively, the signal
    /// comes from the process: the call is answered, then the leader is
    /// stopped and made to queue the signal with its home pid and uid as the
    /// sender (the kernel allows any sender only for a signal to one's own
    /// thread group, from its leader), so a handler or signalfd reads the
    /// same siginfo.
    fn self_signal(&mut self, id: u64, sig: i32, code: i32, to: Option<i32>) -> Flow {
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
    fn queue_from_leader(
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

    /// An iovec array of the guest: its pieces (cut to MAX_IO in all) and total.
    fn read_iovecs(&self, addr: u64, count: usize) -> Option<(Iovecs, usize)> {
        let raw = self.read_mem(addr, count * 16)?;
        let mut iov = Vec::with_capacity(count);
        let mut total = 0usize;
        for c in raw.chunks(16) {
            let base = u64::from_le_bytes(c[0..8].try_into().unwrap_or([0; 8]));
            let len = (u64::from_le_bytes(c[8..16].try_into().unwrap_or([0; 8])) as usize).min(MAX_IO - total);
            iov.push((base, len));
            total += len;
        }
        Some((iov, total))
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

    fn forward(&mut self, n: &SeccompNotif) -> Flow {
        let nr = n.data.nr as u32;
        let mut args = n.data.args;
        let id = n.id;
        // Calls with a shape of their own.
        let (fnr, spec, iov): (u32, Vec<Arg>, Option<Iovecs>) = match nr {
            19 | 20 | 295 | 296 => {
                let Some((iov, total)) = self.read_iovecs(args[1], (args[2] as usize).min(1024)) else {
                    self.reply(id, -libc::EFAULT as i64);
                    return Flow::Go;
                };
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
            54 | 55 if syscalls::sockopt_unit(nr, args[1], args[2]).is_none() => {
                let what = if nr == 54 { "setsockopt" } else { "getsockopt" };
                return self.go_home(&format!("{what} level {} option {} runs at home", args[1], args[2]), Some(id));
            }
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
                        let ok = match (&iov, nr) {
                            (Some(v), 20 | 296) => gather_into(self.gpid, v, &mut input),
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
        let SysRet { ret, mut data, .. } = match self.call_with_job_control(&req, &input, &spec, id) {
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
            return self.go_home(&format!("{} needs home", syscalls::name(nr)), Some(id));
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
                match (&iov, nr) {
                    (Some(v), 19 | 295) => scatter(self.gpid, v, piece),
                    _ => {
                        let _ = sys::process_vm_writev(self.gpid, piece, &[(args[i], valid)]);
                    }
                }
            }
            off += valid;
        }
        self.reply(id, ret);
        if self.flags.come_home.load(Ordering::SeqCst) {
            return self.go_home("asked to come home", None);
        }
        Flow::Go
    }

    /// Send one call to the deputy and wait for its answer. None: home is gone.
    /// Call the deputy; when the deputy was woken out of the call (EINTR),
    /// go home if asked, let the guest's kernel restart or fail the call if a
    /// signal is pending for it, or else issue the call again.
    fn call_restartable(&mut self, req: &SysReq, input: &[u8], spec: &[Arg], id: u64) -> Result<SysRet, Flow> {
        let _ = spec;
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
            if self.flags.come_home.load(Ordering::SeqCst) {
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
    fn call_with_job_control(&mut self, req: &SysReq, input: &[u8], spec: &[Arg], id: u64) -> Result<SysRet, Flow> {
        let r = self.call_restartable(req, input, spec, id)?;
        let Some((sig, orphaned)) = marshal::job_control_of(r.ret) else { return Ok(r) };
        let fail = |errno: i32| SysRet { id: 0, ret: -(errno as i64), data: Vec::new(), more: false };
        let ignored = ignores_or_blocks(self.gpid, sig);
        if ignored && sig == libc::SIGTTIN || !ignored && orphaned {
            return Ok(fail(libc::EIO));
        }
        let flag = if ignored { marshal::JC_IGNORED } else { marshal::JC_SIGNAL };
        let again = SysReq { nr: req.nr | flag, ..req.clone() };
        let r = self.call_restartable(&again, input, spec, id)?;
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
    fn forward_msg(&mut self, n: &SeccompNotif) -> Flow {
        let (nr, a, id) = (n.data.nr as u32, n.data.args, n.id);
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
        let spec = syscalls::spec(nr).unwrap_or(&[]).to_vec();
        let mut lens = [0, 0, namelen as u32, ctllen as u32, total as u32, 0];
        let mut input = Vec::new();
        // The kernel leaves control-message padding untouched: the guest's
        // own bytes go in and come back around what it writes.
        if nr == 47 && ctllen > 0 && read_into(self.gpid, ctl_at, ctllen as usize, &mut input) {
            lens[3] |= marshal::PREFILLED;
        }
        let req =
            SysReq { id: 0, lane: 0, nr, args: [a[0], a[2], namelen, ctllen, total as u64, 0], lens, data: Vec::new() };
        if nr == 46 {
            let ok = read_into(self.gpid, name_at, namelen as usize, &mut input)
                && read_into(self.gpid, ctl_at, ctllen as usize, &mut input)
                && gather_into(self.gpid, &iov, &mut input);
            if !ok {
                self.reply(id, -(libc::EFAULT as i64));
                return Flow::Go;
            }
        }
        let r = match self.call_restartable(&req, &input, &spec, id) {
            Ok(r) => r,
            Err(flow) => return flow,
        };
        if nr == 47 && r.ret >= 0 {
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
        if self.flags.come_home.load(Ordering::SeqCst) {
            return self.go_home("asked to come home", None);
        }
        Flow::Go
    }

    /// Send write `req` (its bytes in `input`) to `fd` behind the previous
    /// ones: answered at once, run by the deputy in order. Only when it
    /// follows a write to the same fd that reported room for it (waiting for
    /// the acknowledgements of writes behind, which report room again): it
    /// then cannot block at home, and it fails only if the peer went away
    /// after it, which the next write learns. False: send it as usual.
    fn write_behind(&mut self, req: &SysReq, input: &[u8], fd: i32) -> bool {
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
    fn read_from_ahead(&mut self, fd: i32, buf: u64, count: usize) -> Option<i64> {
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
    fn keep_ahead(&mut self, fd: i32, n: usize, data: &mut Vec<u8>) {
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
    fn settle_one(&mut self) -> bool {
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
    fn settle_behind(&mut self) -> bool {
        while !self.behind.is_empty() {
            if !self.settle_one() {
                return false;
            }
        }
        true
    }

    /// Send call `req` (its id set) with its input: inline up to INLINE_MAX,
    /// else as a data frame after it (no serialisation copies).
    fn send_call(&mut self, req: SysReq, input: &[u8]) -> Result<(), wire::WireError> {
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
    fn call_deputy(&mut self, req: &SysReq, input: &[u8]) -> Option<SysRet> {
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
    fn fd_ident(&mut self, fd: i32) -> Result<Option<(String, image::FileId)>, bool> {
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

    /// The next message of a move home (not an answer to a call).
    fn next_other(&mut self) -> Result<Msg, wire::WireError> {
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
    fn park_or_home(&mut self, id: u64) -> Option<Flow> {
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
    fn go_home(&mut self, reason: &str, pending: Option<u64>) -> Flow {
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

    fn go_home_now(&mut self, reason: &str, pending: Option<u64>) -> Flow {
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
        let flags = self.flags.clone();
        let _traced = flags.ptrace_lock.lock().unwrap_or_else(|p| p.into_inner());
        match self.send_home(reason, pending) {
            Ok(true) => {
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

    /// A return home failed: the next try waits 0.2 s, then twice as long
    /// each time, up to 10 s.
    fn failed_home(&mut self) {
        self.home_failures = (self.home_failures + 1).min(16);
        let wait = (100u64 << self.home_failures).min(10_000);
        self.retry_at = Some(std::time::Instant::now() + std::time::Duration::from_millis(wait));
    }

    /// Pre-copy the guest home while it runs (or waits in the call that sends
    /// it home), then stop it, capture it, and send what changed.
    fn send_home(&mut self, reason: &str, pending: Option<u64>) -> Result<bool, crate::GuestError> {
        self.send(&Msg::GoingHome { reason: reason.to_string() })?;
        self.send(&transfer::offer(self.gpid, 0, 0, -1.0))?;
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
                    "the process ended on its way".to_string()
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

    fn send_images(&mut self, reopen: Vec<bool>, pending: Option<u64>) -> Result<bool, crate::GuestError> {
        let files = image::mapped_files(self.gpid);
        let same = |p: &str| files.iter().zip(&reopen).any(|((q, _), ok)| *ok && q == p);
        let pre = image::pre_image(self.gpid, &same)?;
        let sent = {
            let flags = self.flags.clone();
            let _g = flags.write_lock.lock().unwrap_or_else(|p| p.into_inner());
            transfer::send_pre_image(&mut self.stream, self.gpid, &pre, image::ReadMode::Pinned)?
        };
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
                return Err(crate::GuestError::Refused("the process ended on its way".into()));
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

    fn send_final(
        &mut self,
        threads: &mut [Tracee],
        same: &dyn Fn(&str) -> bool,
        pre: &Image,
        sent: &image::PageHashes,
    ) -> Result<bool, crate::GuestError> {
        let mut cap = image::capture(threads, same)?;
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
        cap.image.flags = cap.image.flags.with_identity_of(&self.proc_flags);
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

fn is_own_proc(path: &[u8], home: i32) -> bool {
    let p = String::from_utf8_lossy(path);
    p.starts_with("/proc/self")
        || p.starts_with("/proc/thread-self")
        || p.starts_with(&format!("/proc/{home}/"))
        || p == format!("/proc/{home}")
}

/// Append `len` bytes of the guest's memory at `addr` to `buf`.
fn read_into(pid: i32, addr: u64, len: usize, buf: &mut Vec<u8>) -> bool {
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
fn read_prefix_into(pid: i32, addr: u64, len: usize, buf: &mut Vec<u8>) -> usize {
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
fn writable_prefix(pid: i32, addr: u64, len: usize) -> usize {
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
fn gather_into(pid: i32, iov: &[(u64, usize)], buf: &mut Vec<u8>) -> bool {
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

/// Would `sig` stop the guest by its default action (TSTP/TTIN/TTOU not
/// caught or ignored, or SIGSTOP)?
/// si_code of kill() and of tkill()/tgkill().
const SI_USER: i32 = 0;
const SI_TKILL: i32 = -6;

/// A siginfo_t (128 bytes): signo, errno, code, then the sender's pid and
/// uid at offset 16 for a signal a process sent.
fn siginfo(sig: i32, code: i32, sender: Option<(i32, u32)>) -> [u8; 128] {
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
fn below_red_zone(t: &Tracee) -> u64 {
    (t.saved.rsp - 1024) & !15
}

fn stop_is_default(gpid: i32, sig: i32) -> bool {
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
fn stop_as(flags: &Flags, gpid: i32, sig: i32) {
    *flags.stop_sig.lock().unwrap_or_else(|p| p.into_inner()) = Some(sig);
    let _ = sys::kill(gpid, libc::SIGSTOP);
}

/// Whether the guest ignores or blocks `sig`.
fn ignores_or_blocks(gpid: i32, sig: i32) -> bool {
    let Ok(st) = std::fs::read_to_string(format!("/proc/{gpid}/status")) else { return false };
    let f = |k: &str| procfs::hex_mask(&procfs::status_field_in(&st, k).unwrap_or_default());
    (f("SigIgn") | f("SigBlk")) & (1u64 << (sig - 1)) != 0
}

/// What a write of `len` bytes takes of the room a deputy reports: its
/// bytes and the kernel's overhead per buffer (an upper bound).
fn write_cost(len: usize) -> usize {
    len + 1024 + len / 32
}

/// The room a deputy reported after a write (`marshal::WRITE_ROOM`), -1 if none.
fn room_of(data: &[u8]) -> i64 {
    data.get(..8).map_or(-1, |b| i64::from_le_bytes(b.try_into().unwrap_or([0xff; 8])))
}

/// A message's kind for a log line (never its contents).
fn msg_kind(m: &Msg) -> String {
    format!("{m:?}").chars().take_while(|c| c.is_alphanumeric()).collect()
}

fn sleep_ms(ms: u64) -> bool {
    std::thread::sleep(std::time::Duration::from_millis(ms));
    true
}

fn frame_kind(f: &Frame) -> String {
    match f {
        Frame::Msg(m) => format!("{m:?}").chars().take(40).collect(),
        Frame::Data(d) => format!("{} data bytes", d.len()),
    }
}

/// The helper of one guest: applies signals and requests from home (second
/// link), and reports the guest's end. It wakes the supervisor out of RECV
/// with the wake-up signal when it needs it.
fn helper(mut ctl: Link, mut out: Link, gpid: i32, flags: Arc<Flags>, tids: Arc<Vec<(i32, i32)>>) {
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
            return;
        }
        // What the guest uses, once a second, for home's balancer.
        if !home_gone && reported.elapsed() >= std::time::Duration::from_secs(1) {
            reported = std::time::Instant::now();
            if let Some((cpu_ns, run_ns, rss)) = usage(gpid) {
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
            let status = match sys::waitpid(gpid, libc::__WALL) {
                Ok((_, st)) => Some(st),
                Err(_) => flags.reaped.lock().unwrap_or_else(|p| p.into_inner()).take(),
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
            return;
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
