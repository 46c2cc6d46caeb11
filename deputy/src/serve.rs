//! The deputy thread: a thread of omd with a private fd table holding exactly
//! the migrated process's fds (at the same numbers), its cwd and umask, and
//! its credentials. It runs forwarded calls as the process would at home.

use crate::sys as dsys;
use om_runtime::image::Image;
use om_runtime::link::{Cipher, Link};
use om_runtime::marshal::{self, GO_HOME};
use om_runtime::procfs;
use om_runtime::sys;
use om_runtime::syscalls::{self, Arg, Class, Len};
use om_runtime::wire::{self, Frame, Msg, SysReq, SysRet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What the deputy thread tells its controller.
pub enum Event {
    Exited {
        code: i32,
        signal: i32,
    },
    /// The guest stopped (job control) with this signal.
    Stopped(i32),
    /// The guest is coming home; the bytes the deputy had read past that
    /// message, which belong to the controller's reading of the link.
    GoingHome(Vec<u8>),
    Lost(String),
    /// The process's node starts sending it away (home, or on to another
    /// node): its offer, on the control link, whose reader then waits
    /// (`Away::ctl_resume`) while the controller reads the pre-copy there.
    PreCopy(Msg),
}

/// What the controller tells the deputy thread.
pub enum Release {
    /// Start serving: the guest runs.
    Serve,
    /// Serve again on the same link after an aborted move; these bytes (read
    /// ahead by the controller) come first.
    Resume(Vec<u8>),
    /// Serve on a new link (the guest moved to another node): its fd number
    /// in omd's shared fd table.
    Switch(i32, Arc<Cipher>),
    /// Stop; the fd table may go.
    Stop,
}

/// Why one round of serving ended.
pub(crate) enum Ended {
    GoingHome,
    Over,
}

/// What the deputy counts as it serves, in memory it shares with omd: the
/// id of the call being served (0: idle, so omd can interrupt it), and the
/// calls and bytes served (for the balancer).
pub struct Live<'a> {
    pub busy: &'a AtomicU64,
    pub calls: &'a AtomicU64,
    pub bytes: &'a AtomicU64,
    /// The lane workers' slots ([`dsys::LANE_SLOTS`]).
    pub page: &'a dsys::Page,
    /// The threads whose calls run with their own credentials, by home tid.
    pub thread_creds: &'a std::collections::HashMap<i32, dsys::ThreadIdentity>,
}

/// fds at and above this number in the deputy's table are om's own.
pub fn reserved_base() -> i32 {
    let (_, max) = sys::prlimit(0, libc::RLIMIT_NOFILE, None).unwrap_or((1024, 1024));
    (max.min(1 << 20) as i32) - 64
}

pub struct Setup {
    pub pid: i32,
    pub fds: Vec<(i32, bool)>,
    /// The fds nobody else reads from (`procfs::sole_readers`, taken while frozen).
    pub sole: Vec<i32>,
    /// How many threads the process has.
    pub lanes: u32,
    pub umask: u32,
    pub uids: [u32; 3],
    pub gids: [u32; 3],
    pub groups: Vec<u32>,
    /// Threads that run with other ids than the leader.
    pub thread_creds: Vec<om_runtime::image::ThreadCreds>,
}

impl Setup {
    pub fn from_image(img: &Image) -> Setup {
        Setup {
            pid: img.pid,
            fds: img.fds.clone(),
            sole: Vec::new(),
            lanes: img.threads.len() as u32,
            umask: img.umask,
            uids: img.creds.uids,
            gids: img.creds.gids,
            groups: img.creds.groups.clone(),
            thread_creds: img.thread_creds.clone(),
        }
    }
}

/// Serve calls until the guest leaves (GoingHome) or ends.
pub(crate) fn serve_round<R: std::io::Read>(
    rd: &mut R,
    link: &mut Link,
    pid: i32,
    res: i32,
    live: &Live,
    events: &dyn Fn(Event),
    bufs: &mut Buffers,
) -> Ended {
    loop {
        match wire::recv(rd) {
            Ok(Frame::Msg(Msg::Sys(mut req))) => {
                let flags = req.nr & !marshal::NR_MASK;
                req.nr &= marshal::NR_MASK;
                if flags & marshal::READ_TAKE != 0 {
                    let fd = req.args[0] as i32;
                    if (0..res).contains(&fd) {
                        bufs.ahead.take(fd, (req.args[2] as usize).min(marshal::AHEAD_MAX));
                    }
                    continue;
                }
                // Bulk input follows as data frames.
                let want = spec_for(&req).map_or(0, |sp| marshal::input_len(&req, &sp));
                let input_is_separate = req.data.is_empty() && want > 0;
                if input_is_separate {
                    if let Err(why) = read_input(rd, want, &mut bufs.input) {
                        tracing::warn!(why, "bad call data at the deputy");
                        events(Event::Lost(why));
                        return Ended::Over;
                    }
                }
                let input = std::mem::take(&mut bufs.input);
                live.busy.store(req.id, Ordering::SeqCst);
                let input_now = if input_is_separate { &input } else { &req.data };
                let ret = serve(&req, flags, input_now, pid, res, bufs);
                live.busy.store(0, Ordering::SeqCst);
                live.calls.fetch_add(1, Ordering::Relaxed);
                let moved = req.data.len() + input.len() + bufs.answer.len();
                live.bytes.fetch_add(moved as u64, Ordering::Relaxed);
                bufs.input = input;
                if let Err(e) = send_answer(link, &req, flags, ret, &bufs.answer) {
                    events(Event::Lost(e.to_string()));
                    return Ended::Over;
                }
            }
            Ok(Frame::Msg(Msg::FdIdent { id, fd })) => {
                if let Err(e) = wire::send(link, &fd_ident(id, fd, res)) {
                    events(Event::Lost(e.to_string()));
                    return Ended::Over;
                }
            }
            Ok(Frame::Msg(Msg::Exited { code, signal })) => {
                events(Event::Exited { code, signal });
                return Ended::Over;
            }
            Ok(Frame::Msg(Msg::GoingHome { reason })) => {
                tracing::info!(pid, reason, "process leaving its node");
                return Ended::GoingHome;
            }
            Ok(Frame::Msg(m)) => tracing::warn!(?m, "unexpected message at the deputy"),
            Ok(Frame::Data(_)) => tracing::warn!("stray data frame at the deputy"),
            Err(e) => {
                events(Event::Lost(e.to_string()));
                return Ended::Over;
            }
        }
    }
}

/// Send the answer to `req`: its result and output (`answer`), inline when
/// the most it could carry fits a message, else as a data frame after it
/// (`more`). A read with what was read ahead goes by its real size.
fn send_answer<W: std::io::Write>(
    link: &mut W,
    req: &SysReq,
    flags: u32,
    ret: i64,
    answer: &[u8],
) -> Result<(), wire::WireError> {
    let upper = if marshal::ahead_trailer_max(req.nr | flags, &req.args, ret) > 0 {
        0
    } else {
        spec_for(req).map_or(0, |sp| {
            sp.iter().enumerate().map(|(i, a)| marshal::out_valid_len(*a, req.lens[i], ret)).sum::<usize>()
        }) + if ret >= 0 { marshal::msg_trailer(req.nr) } else { 0 }
    };
    let inline = upper.max(answer.len()) <= marshal::INLINE_MAX;
    let data = if inline { answer.to_vec() } else { Vec::new() };
    wire::send(link, &Msg::SysRet(SysRet { id: req.id, ret, data, more: !inline }))?;
    if !inline {
        wire::send_data(link, answer)?;
    }
    Ok(())
}

/// The answer to FdIdent: which file the process's fd `fd` is (none for
/// om's own fds, at and above `res`, or anything but a regular file).
fn fd_ident(id: u64, fd: i32, res: i32) -> Msg {
    let file = if fd >= 0 && fd < res { om_runtime::image::fd_file_id(fd) } else { None };
    Msg::FdIdentRet { id, file }
}

/// Read the data frames of a call's input (`want` bytes) into `input`.
fn read_input<R: std::io::Read>(rd: &mut R, want: usize, input: &mut Vec<u8>) -> Result<(), String> {
    input.clear();
    while input.len() < want {
        match wire::recv_append(rd, input) {
            Ok(None) => {}
            Ok(Some(m)) => return Err(format!("expected a call's data, got {m:?}")),
            Err(e) => return Err(e.to_string()),
        }
    }
    if input.len() != want {
        return Err(format!("{} data bytes for {want}", input.len()));
    }
    Ok(())
}

/// A call for a lane worker: the request, its flags and its input.
type LaneCall = (SysReq, u32, Vec<u8>);

/// Serve calls of a process with several threads until the guest leaves or
/// ends: each thread's calls (its lane, the home tid in the request) run in
/// order on a worker thread of their own, so a call that blocks holds up
/// only its own thread, as natively. Workers answer on the link themselves.
/// Before the round ends, every worker is woken out of its call (it answers
/// EINTR, and calls still queued are answered EINTR unrun), so the link
/// goes back with no answer outstanding.
pub(crate) fn serve_lanes<R: std::io::Read>(
    rd: &mut R,
    link: &mut Link,
    pid: i32,
    res: i32,
    live: &Live,
    events: &dyn Fn(Event),
) -> Ended {
    let link = std::sync::Mutex::new(link);
    let stopping = std::sync::atomic::AtomicBool::new(false);
    let lost = std::sync::atomic::AtomicBool::new(false);
    let slot =
        |k: usize| (live.page.counter(dsys::LANE_SLOTS + 2 * k), live.page.counter(dsys::LANE_SLOTS + 2 * k + 1));
    let ended = std::thread::scope(|sc| {
        // Each lane's worker: its channel and its slot in the page.
        let mut lanes: std::collections::HashMap<i32, (crossbeam::channel::Sender<LaneCall>, usize)> =
            std::collections::HashMap::new();
        let ended = loop {
            match wire::recv(rd) {
                Ok(Frame::Msg(Msg::Sys(mut req))) => {
                    let flags = req.nr & !marshal::NR_MASK;
                    req.nr &= marshal::NR_MASK;
                    if flags & (marshal::READ_TAKE | marshal::WRITE_BEHIND) != 0 {
                        events(Event::Lost("a single-thread call from a thread of several".into()));
                        break Ended::Over;
                    }
                    let want = spec_for(&req).map_or(0, |sp| marshal::input_len(&req, &sp));
                    let mut input = std::mem::take(&mut req.data);
                    if input.is_empty() && want > 0 {
                        if let Err(why) = read_input(rd, want, &mut input) {
                            tracing::warn!(why, "bad call data at the deputy");
                            events(Event::Lost(why));
                            break Ended::Over;
                        }
                    }
                    let tx = match lanes.get(&req.lane) {
                        Some((tx, _)) => tx.clone(),
                        None => {
                            let k = lanes.len();
                            if k >= dsys::MAX_LANES {
                                events(Event::Lost(format!("more than {} threads", dsys::MAX_LANES)));
                                break Ended::Over;
                            }
                            let (tx, rx) = crossbeam::channel::unbounded::<LaneCall>();
                            let (busy, tid) = slot(k);
                            let (link, stopping, lost) = (&link, &stopping, &lost);
                            let (calls, bytes) = (live.calls, live.bytes);
                            let own = live.thread_creds.get(&req.lane);
                            sc.spawn(move || {
                                tid.store(sys::gettid() as u64, Ordering::SeqCst);
                                // A thread with ids of its own: its calls run
                                // with them (credentials are per thread). If
                                // they cannot be taken, its calls run at home.
                                let own_ok = own.is_none_or(|c| match dsys::become_thread(c) {
                                    Ok(()) => true,
                                    Err(e) => {
                                        tracing::error!(%e, tid = c.tid, "cannot take a thread's credentials");
                                        false
                                    }
                                });
                                let mut bufs = Buffers::with_sole(&[]);
                                for (req, flags, input) in rx {
                                    let ret = if !own_ok {
                                        bufs.answer.clear();
                                        GO_HOME
                                    } else if stopping.load(Ordering::SeqCst) {
                                        bufs.answer.clear();
                                        -(libc::EINTR as i64)
                                    } else {
                                        busy.store(req.id, Ordering::SeqCst);
                                        let r = serve(&req, flags, &input, pid, res, &mut bufs);
                                        busy.store(0, Ordering::SeqCst);
                                        r
                                    };
                                    calls.fetch_add(1, Ordering::Relaxed);
                                    bytes.fetch_add((input.len() + bufs.answer.len()) as u64, Ordering::Relaxed);
                                    let mut l = link.lock().unwrap_or_else(|p| p.into_inner());
                                    if send_answer(&mut **l, &req, flags, ret, &bufs.answer).is_err() {
                                        lost.store(true, Ordering::SeqCst);
                                    }
                                }
                            });
                            lanes.insert(req.lane, (tx.clone(), k));
                            tx
                        }
                    };
                    let _ = tx.send((req, flags, input));
                }
                Ok(Frame::Msg(Msg::FdIdent { id, fd })) => {
                    let answer = fd_ident(id, fd, res);
                    let mut l = link.lock().unwrap_or_else(|p| p.into_inner());
                    if let Err(e) = wire::send(&mut **l, &answer) {
                        events(Event::Lost(e.to_string()));
                        break Ended::Over;
                    }
                }
                Ok(Frame::Msg(Msg::Wake { lane })) => {
                    // Its worker, if it is in a call: woken every 2 ms while
                    // that call lasts, up to a second (a wake-up just before
                    // a call blocks is lost).
                    let ks: Vec<usize> = match lane {
                        0 => (0..lanes.len()).collect(),
                        l => lanes.get(&l).map(|&(_, k)| k).into_iter().collect(),
                    };
                    for k in ks {
                        let (busy, tid) = slot(k);
                        let id = busy.load(Ordering::SeqCst);
                        if id != 0 {
                            sc.spawn(move || {
                                for _ in 0..500 {
                                    if busy.load(Ordering::SeqCst) != id {
                                        break;
                                    }
                                    let _ = sys::tgkill(
                                        sys::getpid(),
                                        tid.load(Ordering::SeqCst) as i32,
                                        sys::wake_signal(),
                                    );
                                    std::thread::sleep(std::time::Duration::from_millis(2));
                                }
                            });
                        }
                    }
                }
                Ok(Frame::Msg(Msg::Exited { code, signal })) => {
                    events(Event::Exited { code, signal });
                    break Ended::Over;
                }
                Ok(Frame::Msg(Msg::GoingHome { reason })) => {
                    tracing::info!(pid, reason, "process leaving its node");
                    break Ended::GoingHome;
                }
                Ok(Frame::Msg(m)) => tracing::warn!(?m, "unexpected message at the deputy"),
                Ok(Frame::Data(_)) => tracing::warn!("stray data frame at the deputy"),
                Err(e) => {
                    events(Event::Lost(e.to_string()));
                    break Ended::Over;
                }
            }
        };
        // No call runs on past the round: wake the busy workers until each
        // has answered (a wake-up just before a call blocks is lost, so
        // again every 2 ms), then let them end.
        stopping.store(true, Ordering::SeqCst);
        drop(lanes);
        let t0 = std::time::Instant::now();
        loop {
            let busy: Vec<u64> = (0..dsys::MAX_LANES)
                .filter(|&k| slot(k).0.load(Ordering::SeqCst) != 0)
                .map(|k| slot(k).1.load(Ordering::SeqCst))
                .collect();
            if busy.is_empty() {
                break;
            }
            if t0.elapsed() > std::time::Duration::from_secs(10) {
                tracing::warn!(pid, "a forwarded call does not end; waiting for it");
            }
            for tid in busy {
                let _ = sys::tgkill(sys::getpid(), tid as i32, sys::wake_signal());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        ended
    });
    if lost.load(Ordering::SeqCst) {
        events(Event::Lost("the link broke while answering a call".into()));
        return Ended::Over;
    }
    ended
}

/// The argument layout of a request, as the supervisor built it.
fn spec_for(req: &SysReq) -> Option<Vec<Arg>> {
    Some(match syscalls::name(req.nr) {
        "ioctl" => match syscalls::ioctl_spec(req.args[1])? {
            (0, _) => vec![Arg::Fd, Arg::V, Arg::V],
            (n, false) => vec![Arg::Fd, Arg::V, Arg::In(Len::Const(n))],
            (n, true) => vec![Arg::Fd, Arg::V, Arg::Out(Len::Const(n))],
        },
        "fcntl" => vec![Arg::Fd, Arg::V, Arg::V],
        "kill" => vec![Arg::V, Arg::V],
        _ => syscalls::spec(req.nr)?.to_vec(),
    })
}

/// Reusable buffers of a deputy: a call's bulk input, one guarded buffer per
/// argument, the answer.
#[derive(Default)]
pub struct Buffers {
    input: Vec<u8>,
    args: [dsys::Guarded; 6],
    answer: Vec<u8>,
    ahead: crate::ahead::Ahead,
}

impl Buffers {
    /// Buffers of a deputy whose process alone reads fds `sole`.
    pub fn with_sole(sole: &[i32]) -> Buffers {
        Buffers { ahead: crate::ahead::Ahead::new(sole), ..Buffers::default() }
    }
}

/// kill(-1, sig) as the process itself would make it: every process this
/// one may signal except init, itself (its placeholder here) and the deputy
/// (the kernel skips the caller). The result follows the kernel's rule: ESRCH
/// when nothing was signalled, else the last error other than EPERM, or 0.
fn kill_all_but(me: i32, sig: i32) -> i64 {
    let own = sys::getpid();
    let (mut count, mut ret) = (0, 0i64);
    let Ok(dir) = std::fs::read_dir("/proc") else { return -(libc::ESRCH as i64) };
    for e in dir.flatten() {
        let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        if p == 1 || p == me || p == own {
            continue;
        }
        match sys::kill(p, sig) {
            Ok(()) => count += 1,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                count += 1;
                let errno = e.raw_os_error().unwrap_or(libc::EPERM);
                if errno != libc::EPERM {
                    ret = -(errno as i64);
                }
            }
        }
    }
    if count == 0 {
        -(libc::ESRCH as i64)
    } else {
        ret
    }
}

/// A write the supervisor has answered already: written whole, through
/// EINTR (omd's wake-ups), EAGAIN (another process made the fd
/// non-blocking) and short counts; the bytes written, or the error that
/// stopped it.
fn finish_write(nr: u32, mut args: [u64; 6]) -> i64 {
    let total = args[2];
    let mut done = 0u64;
    while done < total {
        let r = sys::raw_syscall(nr as i64, args);
        match r {
            r if r > 0 => {
                done += r as u64;
                args[1] += r as u64;
                args[2] -= r as u64;
            }
            r if r == -(libc::EINTR as i64) => {}
            r if r == -(libc::EAGAIN as i64) => {
                let _ = sys::poll(&[(args[0] as i32, libc::POLLOUT)], 100);
            }
            r => return if done > 0 { done as i64 } else { r },
        }
    }
    done as i64
}

/// sendmsg control data names fds of the deputy's table: none of om's own.
fn check_rights(ctl: &[u8], res: i32) -> Result<(), i64> {
    let mut off = 0usize;
    // struct cmsghdr: u64 len, i32 level, i32 type, then data; each aligned to 8.
    while off + 16 <= ctl.len() {
        let len = u64::from_le_bytes(ctl[off..off + 8].try_into().unwrap_or([0; 8])) as usize;
        let level = i32::from_le_bytes(ctl[off + 8..off + 12].try_into().unwrap_or([0; 4]));
        let kind = i32::from_le_bytes(ctl[off + 12..off + 16].try_into().unwrap_or([0; 4]));
        if len < 16 || len > ctl.len() - off {
            break;
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            for fd in ctl[off + 16..off + len].chunks_exact(4) {
                if i32::from_le_bytes([fd[0], fd[1], fd[2], fd[3]]) >= res {
                    return Err(-(libc::EBADF as i64));
                }
            }
        }
        off += (len + 7) & !7;
    }
    Ok(())
}

/// Run one forwarded call with the process's identity and fds. `input` holds
/// the input arguments' bytes (inline in the request, or the data frame that
/// followed it); `flags` are the supervisor's job-control flags
/// (`marshal::JC_*`). Returns the result; the answer's bytes are in `b.answer`.
pub fn serve(req: &SysReq, flags: u32, input: &[u8], pid: i32, res: i32, b: &mut Buffers) -> i64 {
    b.answer.clear();
    if syscalls::class(req.nr) != Class::Forward && req.nr != 62 {
        return -(libc::ENOSYS as i64);
    }
    let Some(spec) = spec_for(req) else { return -(libc::ENOSYS as i64) };
    if let Err(e) = marshal::validate(req, &spec, input.len()) {
        tracing::warn!(nr = req.nr, e, "malformed forwarded call refused");
        return -(libc::EINVAL as i64);
    }
    if flags & marshal::JC_IGNORED == 0 {
        if let Some(r) = crate::tty::job_control(req.nr, &req.args, pid, flags & marshal::JC_SIGNAL != 0) {
            return r;
        }
    }
    if let Some(v) = crate::tty::ask(req.nr, &req.args, pid) {
        if marshal::len_of(req.lens[2]) != 4 {
            return -(libc::EFAULT as i64);
        }
        b.answer.extend_from_slice(&(v as i32).to_le_bytes());
        return 0;
    }
    let mut args = req.args;
    let name = syscalls::name(req.nr);
    match name {
        "getppid" => return procfs::stat(pid).map(|s| s.field(4) as i64).unwrap_or(1),
        "wait4" | "waitid" => {
            return if procfs::children(pid).is_empty() { -(libc::ECHILD as i64) } else { GO_HOME };
        }
        // kill(-1): every process it may signal but itself and init. Run by
        // the deputy, the kernel would skip the deputy and hit the process's
        // own placeholder (which hands the signal on to it).
        "kill" if args[0] as i32 == -1 => return kill_all_but(pid, args[1] as i32),
        "kill" if args[0] == 0 => {
            let pgid = procfs::stat(pid).map(|s| s.field(5) as i64).unwrap_or(pid as i64);
            args[0] = (-pgid) as u64;
        }
        "close_range" => args[1] = args[1].min((res - 1) as u64),
        // Only options whose size the table knows exactly.
        "setsockopt" | "getsockopt" if syscalls::sockopt_unit(req.nr, args[1], args[2]).is_none() => return GO_HOME,
        // Signal-mask pointers: the supervisor forwards these calls only
        // without one (with one they run at home); never trust the link for a
        // pointer into this process.
        "pselect6" => args[5] = 0,
        "ppoll" => args[3] = 0,
        "epoll_pwait" => args[4] = 0,
        _ => {}
    }
    // Every pointer argument gets a buffer of its own, flush against a guard
    // page (see [`dsys::Guarded`]): a kernel that used more than the bytes
    // sized here would fail with EFAULT, never reach the deputy's memory.
    // Only an input counted by another argument (write's count), which the
    // kernel reads exactly, is used where it lies.
    let mut in_off = 0usize;
    for (i, a) in spec.iter().enumerate() {
        let len = marshal::len_of(req.lens[i]);
        match *a {
            Arg::V => {}
            Arg::Fd => {
                if args[i] as i32 >= res {
                    return -(libc::EBADF as i64);
                }
            }
            _ if len == 0 && args[i] == 0 => {}
            Arg::In(Len::Val(j)) if args[j] as usize == len => {
                args[i] = input[in_off..].as_ptr() as u64;
                in_off += len;
            }
            a if req.lens[i] & marshal::READONLY_TAIL != 0 => {
                // The guest could read all of it but write only the first args[i] bytes.
                let writable = (args[i] as usize).min(len);
                match b.args[i].split(&input[in_off..in_off + len], writable) {
                    Ok(p) => args[i] = p as u64,
                    Err(_) => return -(libc::EINVAL as i64),
                }
                if marshal::is_in_len(a, req.lens[i]) {
                    in_off += len;
                }
            }
            a => {
                let Ok(buf) = b.args[i].tail(len) else { return -(libc::ENOMEM as i64) };
                if marshal::is_in_len(a, req.lens[i]) {
                    buf.copy_from_slice(&input[in_off..in_off + len]);
                    in_off += len;
                }
                args[i] = buf.as_mut_ptr() as u64;
            }
        }
    }
    if name == "sendmsg" && req.lens[3] > 0 {
        // The control bytes as sent: after the name, before the data.
        let (name, ctl) = (marshal::len_of(req.lens[2]), marshal::len_of(req.lens[3]));
        if let Err(e) = check_rights(input.get(name..name + ctl).unwrap_or(&[]), res) {
            return e;
        }
    }
    let (ret, trailer) = match name {
        "sendmsg" | "recvmsg" => {
            let l = |i: usize| req.lens[i] as usize;
            let (ret, namelen, ctllen, flags) = crate::sys::msg_call(
                name == "sendmsg",
                args[0] as i32,
                args[1],
                (args[2], l(2)),
                (args[3], l(3)),
                (args[4], l(4)),
            );
            let mut t = Vec::new();
            if name == "recvmsg" {
                t.extend_from_slice(&namelen.to_le_bytes());
                t.extend_from_slice(&(ctllen as u32).to_le_bytes());
                t.extend_from_slice(&flags.to_le_bytes());
            }
            (ret, t)
        }
        _ if flags & marshal::WRITE_BEHIND != 0 && marshal::may_write_behind(req.nr, &args) => {
            (finish_write(req.nr, args), Vec::new())
        }
        _ => (sys::raw_syscall(req.nr as i64, args), Vec::new()),
    };
    if flags & marshal::WRITE_ROOM != 0 && marshal::may_write_behind(req.nr, &req.args) {
        b.answer.extend_from_slice(&dsys::write_room(req.args[0] as i32).to_le_bytes());
        return ret;
    }
    for (i, a) in spec.iter().enumerate() {
        let len = marshal::len_of(req.lens[i]);
        if marshal::is_out(*a) && len > 0 {
            let mut valid = marshal::out_valid_len(*a, req.lens[i], ret);
            let prefilled = req.lens[i] & marshal::PREFILLED != 0;
            if let (Arg::Out(Len::DerefU32(j)), false) = (*a, prefilled) {
                let l = b.args[j].placed();
                let post = if marshal::len_of(req.lens[j]) == 4 && l.len() == 4 {
                    u32::from_le_bytes([l[0], l[1], l[2], l[3]])
                } else {
                    0
                };
                valid = marshal::socklen_valid(valid, post, marshal::socklen_unit(req.nr, &req.args), ret);
            }
            let buf = b.args[i].placed();
            b.answer.extend_from_slice(&buf[..valid.min(buf.len())]);
        }
    }
    if ret >= 0 {
        b.answer.extend_from_slice(&trailer);
    }
    b.ahead.after_call(name, &req.args, ret, name == "sendmsg" && req.lens[3] > 0);
    if marshal::ahead_trailer_max(req.nr | flags, &req.args, ret) > 0 {
        b.ahead.trailer(req.args[0] as i32, res, &mut b.answer);
    }
    ret
}
