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

mod forward;
mod home;
mod identity;
mod memory;
mod signals;
mod threads;

use signals::{helper, siginfo};

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
    /// This lane's thread's ids at home (the process's, unless the thread
    /// runs with its own).
    creds: Creds,
    /// The process's ids, and those of threads that run with their own.
    all_creds: Arc<(Creds, Vec<image::ThreadCreds>)>,
    /// prctl settings as home had them (the identity part is answered from here).
    proc_flags: om_runtime::image::ProcFlags,
    /// What its shared memory is at home (SysV segments, objects it holds
    /// fds on there), shared by its lanes.
    refs: Arc<Mutex<image::HomeRefs>>,
    next_id: u64,
    flags: Arc<Flags>,
    /// Whether a return home has sent all its images (home then answers).
    images_sent: bool,
    /// Failed returns home in a row, and when the next may start.
    home_failures: u32,
    retry_at: Option<std::time::Instant>,
    /// The gang it moved here with (others run here too), if any.
    gang: Option<Arc<AwayGang>>,
    /// The return home it takes part in with its gang: (the token home
    /// knows it by, where the members meet, their pids here).
    attempt: Option<home::Attempt>,
    /// It went home (its end is not a failure of its gang's return).
    went_home: bool,
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
    /// The pre-copy of a return home (see `home::Pre`), and whether it is
    /// done (so a lane sees it without the lock).
    pre: Mutex<home::Pre>,
    pre_done: AtomicBool,
    /// Where the helper hands home's answers to the pre-copy (they come on
    /// the control link).
    pre_answers: Mutex<Option<std::sync::mpsc::Sender<Msg>>>,
    /// The control link, for the pre-copy to write on, and whole frames on it.
    ctl_out: Mutex<Option<Link>>,
    ctl_lock: Mutex<()>,
    /// Tracks which pages the guest writes (made at its rebuild), for a
    /// pre-copy home that converges.
    dirty: Mutex<Option<om_runtime::dirty::Dirty>>,
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
    call_home(&all);
    all.len()
}

/// A gang whose members run on this node: when one goes home, all do,
/// together ([`om_runtime::gang`]).
pub(crate) struct AwayGang {
    token: u64,
    members: Mutex<Vec<(i32, Arc<Flags>)>>,
    /// The return home in progress: (its number, where the members meet).
    attempt: Mutex<(u64, Option<Arc<om_runtime::gang::Sync>>)>,
}

type AwayGangs = Mutex<Option<std::collections::HashMap<u64, Arc<AwayGang>>>>;
static AWAY: AwayGangs = Mutex::new(None);

impl AwayGang {
    fn join(token: u64, gpid: i32, flags: &Arc<Flags>) -> Arc<AwayGang> {
        let mut all = AWAY.lock().unwrap_or_else(|p| p.into_inner());
        let g = all
            .get_or_insert_with(std::collections::HashMap::new)
            .entry(token)
            .or_insert_with(|| {
                Arc::new(AwayGang { token, members: Mutex::new(Vec::new()), attempt: Mutex::new((0, None)) })
            })
            .clone();
        g.members.lock().unwrap_or_else(|p| p.into_inner()).push((gpid, flags.clone()));
        g
    }

    /// A member's supervisor ends: it went home with the others, or its
    /// process ended (a return in progress goes on without it).
    fn leave(&self, gpid: i32, went_home: bool) {
        let left = {
            let mut m = self.members.lock().unwrap_or_else(|p| p.into_inner());
            m.retain(|(p, _)| *p != gpid);
            m.len()
        };
        if !went_home {
            // It ended: a return in progress goes on without it.
            if let Some(s) = &self.attempt.lock().unwrap_or_else(|p| p.into_inner()).1 {
                s.leave();
            }
        }
        if left == 0 {
            let mut all = AWAY.lock().unwrap_or_else(|p| p.into_inner());
            all.as_mut().map(|a| a.remove(&self.token));
        }
    }

    /// Take part in the gang's return home: the one in progress, or a new
    /// one for the members here now. Asks every other member to come home.
    /// None when this member is alone here now.
    fn begin(&self, me: i32) -> Option<home::Attempt> {
        let members: Vec<(i32, Arc<Flags>)> = self.members.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if members.len() < 2 {
            return None;
        }
        let mut pids: Vec<i32> = members.iter().map(|(p, _)| *p).collect();
        pids.sort_unstable();
        let (n, sync) = {
            let mut a = self.attempt.lock().unwrap_or_else(|p| p.into_inner());
            if a.1.as_ref().is_none_or(|s| s.failed().is_some()) {
                a.0 += 1;
                a.1 = Some(Arc::new(om_runtime::gang::Sync::new(members.len())));
            }
            (a.0, a.1.clone()?)
        };
        let others: Vec<Arc<Flags>> = members.into_iter().filter(|(p, _)| *p != me).map(|(_, f)| f).collect();
        std::thread::spawn(move || call_home(&others));
        // Home names this return by the gang's token and its number.
        Some((self.token ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15), sync, pids))
    }
}

/// Ask the supervisors of `all` to take their guests home, waking each
/// until it has taken the request (it may be in a call).
fn call_home(all: &[Arc<Flags>]) {
    for f in all {
        f.come_home.store(true, Ordering::SeqCst);
    }
    // Wake each supervisor until it has taken the request (it may be in a call).
    for _ in 0..400 {
        let mut waiting = false;
        for f in all {
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
        gang: (u64, u32),
        dirty: Option<om_runtime::dirty::Dirty>,
    ) -> std::io::Result<Supervisor> {
        let flags = register();
        *flags.dirty.lock().unwrap_or_else(|p| p.into_inner()) = dirty;
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
            all_creds: Arc::new((img.creds.clone(), img.thread_creds.clone())),
            proc_flags: img.flags,
            refs: Arc::new(Mutex::new(image::HomeRefs::of(gpid, img))),
            next_id: 1,
            flags: flags.clone(),
            images_sent: false,
            home_failures: 0,
            retry_at: None,
            gang: (gang.1 > 1).then(|| AwayGang::join(gang.0, gpid, &flags)),
            attempt: None,
            went_home: false,
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
        match ctl.try_clone() {
            Ok(c) => *self.flags.ctl_out.lock().unwrap_or_else(|p| p.into_inner()) = Some(c),
            Err(_) => return self.lost("cannot set up the control link"),
        }
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
        if let Some(g) = &self.gang {
            g.leave(self.gpid, self.went_home);
        }
        self.flags.done.store(true, Ordering::SeqCst);
    }

    /// A supervisor for another thread's lane, sharing this one's link,
    /// flags and lanes.
    fn sibling(&self, lane: Lane, lane_no: usize) -> std::io::Result<Supervisor> {
        let own = self.all_creds.1.iter().find(|t| t.tid == lane.home_tid);
        let creds = own.map_or_else(|| self.all_creds.0.clone(), |t| t.creds.clone());
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
            creds,
            all_creds: self.all_creds.clone(),
            proc_flags: self.proc_flags,
            refs: self.refs.clone(),
            next_id: 1,
            flags: self.flags.clone(),
            images_sent: false,
            home_failures: 0,
            retry_at: None,
            gang: self.gang.clone(),
            attempt: None,
            went_home: false,
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
            // Asked to come home: the memory is copied home by a thread of
            // its own while the calls go on; then the freeze.
            if self.asked_home() {
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

    fn reply(&self, id: u64, val: i64) {
        let _ = sys::seccomp_send(self.lfd(), id, val, false);
    }

    /// One trapped call, dispatched by its name to the family that serves
    /// it (`supervisor/*.rs`), or by its class in the syscall table.
    fn handle(&mut self, n: &SeccompNotif) -> Flow {
        let nr = n.data.nr as u32;
        // Asked to come home: go before forwarding anything (a call restarted
        // after the deputy was woken would otherwise wait there again).
        if self.asked_home() {
            return self.go_home("asked to come home", Some(n.id));
        }
        let (class, name) = syscalls::entry(nr).map_or((Class::Home, "unknown"), |e| (e.class, e.name));
        if let Some(flow) = self.signal_to_itself(name, n) {
            return flow;
        }
        if let Some(flow) = self.open_at_home(name, n) {
            return flow;
        }
        match (class, name) {
            (Class::Emulated, "prctl") => self.prctl(n),
            (Class::Emulated, _) => match self.emulate(name, n) {
                Some(v) => {
                    self.reply(n.id, v);
                    Flow::Go
                }
                None => self.forward(n),
            },
            (Class::Forward, "sendmsg" | "recvmsg") => self.forward_msg(n),
            (Class::Forward, _) => self.forward(n),
            (Class::Local, "mmap") => self.mmap_file(n),
            (Class::Local, "exit") => {
                self.home_if_threaded(n, "a thread ends at home (its robust futexes name its home tid)")
            }
            (Class::Local, "futex") => {
                self.home_if_threaded(n, "priority-inheritance futexes run at home (their words hold home tids)")
            }
            (Class::Local, "sched_getaffinity" | "sched_setaffinity") => self.affinity(n),
            (Class::Local, "timer_create") => self.timer_create(n),
            (Class::Local | Class::Home, _) => self.go_home(&format!("{name} runs at home"), Some(n.id)),
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
}

/// Would `sig` stop the guest by its default action (TSTP/TTIN/TTOU not
/// caught or ignored, or SIGSTOP)?
/// si_code of kill() and of tkill()/tgkill().
const SI_USER: i32 = 0;
const SI_TKILL: i32 = -6;

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

#[cfg(test)]
mod tests {
    /// Calls are dispatched by name: every name a handler or the filter
    /// matches on is a call of the syscall table (a misspelt one would
    /// silently never match).
    #[test]
    fn every_call_name_matched_on_is_in_the_table() {
        let sources = [
            include_str!("supervisor.rs"),
            include_str!("supervisor/forward.rs"),
            include_str!("supervisor/home.rs"),
            include_str!("supervisor/identity.rs"),
            include_str!("supervisor/memory.rs"),
            include_str!("supervisor/signals.rs"),
            include_str!("supervisor/threads.rs"),
            include_str!("filter.rs"),
        ];
        let mut names = 0;
        for src in sources {
            // A quoted name followed by `=>`, `|` or ` if`: a match arm.
            for (i, _) in src.match_indices('"') {
                let rest = &src[i + 1..];
                let Some(end) = rest.find('"') else { continue };
                let (word, after) = (&rest[..end], &rest[end + 1..]);
                let arm = after.starts_with(" =>") || after.starts_with(" |") || after.starts_with(" if");
                if arm
                    && !word.is_empty()
                    && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    assert!(
                        om_runtime::syscalls::TABLE.iter().any(|e| e.name == word),
                        "{word:?} is matched on but is no call in the syscall table"
                    );
                    names += 1;
                }
            }
        }
        assert!(names > 30, "only {names} call names found: the scan is broken");
    }
}
