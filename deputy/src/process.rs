//! The deputy as a process of its own.
//!
//! omd starts one per migrated process (its own binary, `omd __om-deputy`),
//! hands it the process's fds at their numbers, its cwd and umask, the link
//! to the node that runs it (the socket and that link's session keys, never
//! the cluster key), and a page of counters. The deputy then takes the
//! process's uids, gids, groups and (for root) capability sets, becomes
//! undumpable, and serves the forwarded calls. A deputy that crashes or is
//! killed ends only its own process: omd sees its socket close and kills the
//! placeholder, as if the process's host had died.
//!
//! In `ps` a deputy shows as `omdep-PID`, PID being its process's.
//!
//! omd's side is a proxy thread per process that speaks to the controller
//! with the same [`Event`]s and [`Release`]s a thread deputy did.

use crate::serve::{self, Buffers, Ended, Event, Live, Release, Setup};
use crate::sys as dsys;
use crossbeam::channel::{Receiver, Sender};
use om_runtime::link::{Cipher, Link, SessionKeys, SessionPos};
use om_runtime::sys;
use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The argument that makes omd run as a deputy.
pub const ARG: &str = "__om-deputy";
/// Largest frame between omd and a deputy (read-ahead bytes and setup).
const MAX_FRAME: usize = 16 << 20;

/// omd to deputy.
#[derive(Serialize, Deserialize, Debug)]
enum Down {
    /// With fds: the link's socket, the cwd (O_PATH), the counter page.
    Setup(SetupMsg),
    /// With up to [`dsys::FDS_PER_FRAME`] of the process's fds, in the order of `SetupMsg::fds`.
    Fds,
    Serve(SessionPos),
    Resume(Vec<u8>, SessionPos),
    /// With the new link's socket.
    Switch(SessionKeys, SessionPos),
    Stop,
}

/// Deputy to omd.
#[derive(Serialize, Deserialize, Debug)]
enum Up {
    Ready,
    Failed(String),
    Exited { code: i32, signal: i32 },
    GoingHome(Vec<u8>, SessionPos),
    Lost(String),
}

#[derive(Serialize, Deserialize, Debug)]
struct SetupMsg {
    pid: i32,
    fds: Vec<(i32, bool)>,
    sole: Vec<i32>,
    /// The process's threads: with more than one, each thread's calls run
    /// on a worker of their own.
    lanes: u32,
    umask: u32,
    res: i32,
    keys: SessionKeys,
    uids: [u32; 3],
    gids: [u32; 3],
    groups: Vec<u32>,
    /// Effective, permitted and inheritable capabilities, for a root process.
    caps: Option<[u64; 3]>,
    /// Threads that run with other credentials than the leader.
    threads: Vec<dsys::ThreadIdentity>,
}

fn send<T: Serialize>(sock: RawFd, m: &T, fds: &[RawFd]) -> std::io::Result<()> {
    let b = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    dsys::send_frame(sock, &b, fds)
}

fn recv<T: for<'de> Deserialize<'de>>(sock: RawFd) -> std::io::Result<(T, Vec<OwnedFd>)> {
    let (b, fds) = dsys::recv_frame(sock, MAX_FRAME)?;
    let m = serde_json::from_slice(&b).map_err(|e| std::io::Error::other(format!("bad frame: {e}")))?;
    Ok((m, fds))
}

/// What omd holds of a running deputy process.
pub struct Shared {
    /// The deputy process's pid (0 before it runs).
    pub pid: AtomicI32,
    page: Mutex<Option<Arc<dsys::Page>>>,
    pub usage: Arc<crate::Usage>,
}

impl Shared {
    pub fn new(usage: Arc<crate::Usage>) -> Shared {
        Shared { pid: AtomicI32::new(0), page: Mutex::new(None), usage }
    }

    /// The calls the deputy is serving, as one number (0: idle; it changes
    /// when any of them does).
    pub fn busy(&self) -> u64 {
        let page = self.page.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = page.as_ref() else { return 0 };
        (0..dsys::MAX_LANES)
            .map(|k| p.counter(dsys::LANE_SLOTS + 2 * k).load(Ordering::SeqCst))
            .fold(p.counter(0).load(Ordering::SeqCst), |a, b| a ^ b)
    }

    /// Wake the deputy out of its blocking calls (they return EINTR): its
    /// main thread, and each lane worker that is serving a call.
    pub fn interrupt(&self) {
        let pid = self.pid.load(Ordering::SeqCst);
        if pid <= 0 {
            return;
        }
        let _ = sys::kill(pid, sys::wake_signal());
        let page = self.page.lock().unwrap_or_else(|p| p.into_inner());
        let Some(p) = page.as_ref() else { return };
        for k in 0..dsys::MAX_LANES {
            let slot = dsys::LANE_SLOTS + 2 * k;
            if p.counter(slot).load(Ordering::SeqCst) != 0 {
                let tid = p.counter(slot + 1).load(Ordering::SeqCst) as i32;
                if tid > 0 {
                    let _ = sys::tgkill(pid, tid, sys::wake_signal());
                }
            }
        }
    }
}

/// The credentials and capabilities of `pid`, from /proc.
fn process_caps(pid: i32) -> Option<[u64; 3]> {
    thread_caps(pid, pid)
}

/// Effective, permitted and inheritable capabilities of thread `tid`.
fn thread_caps(pid: i32, tid: i32) -> Option<[u64; 3]> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let f = |k: &str| om_runtime::procfs::status_field_in(&st, k).and_then(|v| u64::from_str_radix(&v, 16).ok());
    Some([f("CapEff")?, f("CapPrm")?, f("CapInh")?])
}

/// omd's side: start the deputy process for the frozen process `setup.pid`,
/// hand it everything, and wait until it is ready. Then run, in a thread of
/// its own, the proxy between the controller and the deputy.
pub fn start(
    link: &Link,
    setup: Setup,
    shared: Arc<Shared>,
    events: Sender<Event>,
    release: Receiver<Release>,
) -> Result<(), String> {
    let pid = setup.pid;
    let e = |what: &'static str| move |err: std::io::Error| format!("deputy for process {pid}: {what}: {err}");
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(e("socketpair"))?;
    let page_fd = sys::memfd("om-deputy-live").map_err(e("memfd"))?;
    std::fs::File::from(page_fd.try_clone().map_err(e("dup"))?).set_len(4096).map_err(e("page"))?;
    let page = Arc::new(dsys::Page::map(&page_fd).map_err(e("page"))?);
    let cwd = std::fs::File::open(format!("/proc/{pid}/cwd")).map_err(e("its cwd"))?;
    let theirs_fd = theirs.as_raw_fd();
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.arg(ARG).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null());
    dsys::pass_as_fd3(&mut cmd, theirs_fd);
    let child = cmd.spawn().map_err(e("spawn"))?;
    drop(theirs);
    let child = Arc::new(Mutex::new(child));
    let cpid = child.lock().map(|c| c.id() as i32).unwrap_or(0);
    let sock = ours.as_raw_fd();
    let fail = |why: String| {
        if let Ok(mut c) = child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        why
    };
    let msg = SetupMsg {
        pid,
        fds: setup.fds.clone(),
        sole: setup.sole.clone(),
        lanes: setup.lanes,
        umask: setup.umask,
        res: serve::reserved_base(),
        keys: link.cipher().session_keys(),
        uids: setup.uids,
        gids: setup.gids,
        groups: setup.groups.clone(),
        caps: if setup.uids[1] == 0 { process_caps(pid) } else { None },
        threads: setup
            .thread_creds
            .iter()
            .map(|t| dsys::ThreadIdentity {
                tid: t.tid,
                uids: t.creds.uids,
                gids: t.creds.gids,
                groups: t.creds.groups.clone(),
                caps: thread_caps(pid, t.tid).unwrap_or([0; 3]),
            })
            .collect(),
    };
    send(sock, &Down::Setup(msg), &[link.as_raw_fd(), cwd.as_raw_fd(), page_fd.as_raw_fd()])
        .map_err(|err| fail(format!("deputy setup: {err}")))?;
    let pidfd = sys::pidfd_open(pid, 0).map_err(|err| fail(format!("deputy setup: pidfd: {err}")))?;
    for chunk in setup.fds.chunks(dsys::FDS_PER_FRAME) {
        let mut held = Vec::with_capacity(chunk.len());
        for &(fd, _) in chunk {
            held.push(
                sys::pidfd_getfd(pidfd.as_raw_fd(), fd)
                    .map_err(|err| fail(format!("deputy setup: taking fd {fd}: {err}")))?,
            );
        }
        let raw: Vec<RawFd> = held.iter().map(|f| f.as_raw_fd()).collect();
        send(sock, &Down::Fds, &raw).map_err(|err| fail(format!("deputy setup: {err}")))?;
    }
    match recv::<Up>(sock) {
        Ok((Up::Ready, _)) => {}
        Ok((Up::Failed(why), _)) => return Err(fail(format!("deputy setup: {why}"))),
        Ok((m, _)) => return Err(fail(format!("deputy setup: unexpected {m:?}"))),
        Err(err) => return Err(fail(format!("deputy setup: the deputy process ended: {err}"))),
    }
    shared.pid.store(cpid, Ordering::SeqCst);
    *shared.page.lock().unwrap_or_else(|p| p.into_inner()) = Some(page.clone());
    let current = Arc::new(Mutex::new(link.cipher()));
    // Events from the deputy.
    let reader = ours.try_clone().map_err(e("dup"))?;
    let (cur, ch, ev) = (current.clone(), child.clone(), events.clone());
    std::thread::Builder::new()
        .name(format!("deputy-up-{pid}"))
        .spawn(move || read_up(reader, cur, ch, ev, pid))
        .map_err(e("thread"))?;
    // Requests from the controller, and the counters for the balancer.
    std::thread::Builder::new()
        .name(format!("deputy-down-{pid}"))
        .spawn(move || write_down(ours, current, release, shared, page, child))
        .map_err(e("thread"))?;
    Ok(())
}

fn read_up(
    sock: std::os::unix::net::UnixStream,
    current: Arc<Mutex<Arc<Cipher>>>,
    child: Arc<Mutex<std::process::Child>>,
    events: Sender<Event>,
    pid: i32,
) {
    loop {
        match recv::<Up>(sock.as_raw_fd()) {
            Ok((Up::GoingHome(ahead, pos), _)) => {
                // The controller reads the link on from where the deputy left it.
                current.lock().unwrap_or_else(|p| p.into_inner()).set_pos(&pos);
                let _ = events.send(Event::GoingHome(ahead));
            }
            Ok((Up::Exited { code, signal }, _)) => {
                let _ = events.send(Event::Exited { code, signal });
            }
            Ok((Up::Lost(why), _)) => {
                let _ = events.send(Event::Lost(why));
            }
            Ok((m, _)) => tracing::warn!(pid, ?m, "unexpected message from the deputy"),
            Err(_) => {
                let status = child.lock().ok().and_then(|mut c| c.wait().ok());
                let why = match status {
                    Some(s) if s.success() => return,
                    Some(s) => format!("the deputy process ended ({s})"),
                    None => "the deputy process ended".to_string(),
                };
                tracing::error!(pid, why, "deputy lost");
                let _ = events.send(Event::Lost(why));
                return;
            }
        }
    }
}

fn write_down(
    sock: std::os::unix::net::UnixStream,
    current: Arc<Mutex<Arc<Cipher>>>,
    release: Receiver<Release>,
    shared: Arc<Shared>,
    page: Arc<dsys::Page>,
    child: Arc<Mutex<std::process::Child>>,
) {
    let fd = sock.as_raw_fd();
    let pos = || current.lock().unwrap_or_else(|p| p.into_inner()).pos();
    loop {
        shared.usage.calls.store(page.counter(1).load(Ordering::Relaxed), Ordering::Relaxed);
        shared.usage.bytes.store(page.counter(2).load(Ordering::Relaxed), Ordering::Relaxed);
        let sent = match release.recv_timeout(Duration::from_millis(250)) {
            Ok(Release::Serve) => send(fd, &Down::Serve(pos()), &[]),
            Ok(Release::Resume(ahead)) => send(fd, &Down::Resume(ahead, pos()), &[]),
            Ok(Release::Switch(link_fd, c)) => {
                *current.lock().unwrap_or_else(|p| p.into_inner()) = c.clone();
                send(fd, &Down::Switch(c.session_keys(), c.pos()), &[link_fd])
            }
            Ok(Release::Stop) | Err(crossbeam::channel::RecvTimeoutError::Disconnected) => {
                let _ = send(fd, &Down::Stop, &[]);
                // It ends by itself; make sure.
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(mut c) = child.lock() {
                    if c.try_wait().ok().flatten().is_none() {
                        let _ = c.kill();
                    }
                }
                return;
            }
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => Ok(()),
        };
        if let Err(e) = sent {
            tracing::warn!(%e, "cannot reach the deputy process");
        }
    }
}

/// The deputy process: `omd __om-deputy`, with its socket to omd at fd 3 and
/// its log at `log`. Never returns.
pub fn child_main(log: RawFd) -> ! {
    std::panic::set_hook(Box::new(|info| tracing::error!(%info, "deputy panicked")));
    let code = match child(log) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(e, "deputy ended");
            1
        }
    };
    std::process::exit(code)
}

fn child(log: RawFd) -> Result<(), String> {
    let (m, mut fds) = recv::<Down>(3).map_err(|e| format!("no setup from omd: {e}"))?;
    let Down::Setup(s) = m else { return Err("the first message was not the setup".into()) };
    if fds.len() != 3 || s.res < 64 {
        return Err("bad setup".into());
    }
    let page_fd = fds.pop().ok_or("no page")?;
    let cwd = fds.pop().ok_or("no cwd")?;
    let link_fd = fds.pop().ok_or("no link")?;
    let res = s.res;
    dsys::set_name(&format!("omdep-{}", s.pid));
    // om's own fds above `res`: the link, the socket to omd, the log.
    let r1 = sys::dup_above(link_fd.as_raw_fd(), res).map_err(|e| e.to_string())?;
    drop(link_fd);
    let ctl = sys::dup_above(3, res + 40).map_err(|e| e.to_string())?;
    let _ = log;
    let page = dsys::Page::map(&page_fd).map_err(|e| e.to_string())?;
    drop(page_fd);
    dsys::fchdir(cwd.as_raw_fd()).map_err(|e| format!("entering the process's cwd: {e}"))?;
    drop(cwd);
    // The process's fds, then each moved to its number.
    let mut got: Vec<OwnedFd> = Vec::with_capacity(s.fds.len());
    while got.len() < s.fds.len() {
        let (m, more) = recv::<Down>(ctl).map_err(|e| format!("fds from omd: {e}"))?;
        if !matches!(m, Down::Fds) || more.is_empty() {
            return Err("expected the process's fds".into());
        }
        got.extend(more);
    }
    if got.len() != s.fds.len() || s.fds.iter().any(|&(fd, _)| fd < 0 || fd >= res) {
        return Err("the process's fds do not match their numbers".into());
    }
    let top = s.fds.iter().map(|&(fd, _)| fd).max().unwrap_or(0) + 1;
    let mut temp = Vec::with_capacity(got.len());
    for f in got {
        temp.push(dsys::dup_cloexec_above(f.as_raw_fd(), top).map_err(|e| e.to_string())?);
    }
    sys::close_range(0, (top - 1) as u32).map_err(|e| e.to_string())?;
    for (&(fd, cloexec), &t) in s.fds.iter().zip(&temp) {
        sys::dup3(t, fd, if cloexec { libc::O_CLOEXEC } else { 0 }).map_err(|e| e.to_string())?;
    }
    if top < res {
        sys::close_range(top as u32, (res - 1) as u32).map_err(|e| e.to_string())?;
    }
    sys::umask(s.umask);
    sys::install_wakeup_handler(sys::wake_signal()).map_err(|e| e.to_string())?;
    if let Err(e) = dsys::become_process(s.uids, s.gids, &s.groups, s.caps) {
        let _ = send(ctl, &Up::Failed(format!("cannot take the process's credentials: {e}")), &[]);
        return Err(e.to_string());
    }
    send(ctl, &Up::Ready, &[]).map_err(|e| e.to_string())?;
    let own: std::collections::HashMap<i32, dsys::ThreadIdentity> = s.threads.into_iter().map(|t| (t.tid, t)).collect();
    serve_loop(ctl, r1, s.keys, (s.pid, res, s.lanes), (&page, &own), &s.sole)
}

fn serve_loop(
    ctl: RawFd,
    r1: RawFd,
    keys: SessionKeys,
    (pid, res, lanes): (i32, i32, u32),
    (page, thread_creds): (&dsys::Page, &std::collections::HashMap<i32, dsys::ThreadIdentity>),
    sole: &[i32],
) -> Result<(), String> {
    let live = Live { busy: page.counter(0), calls: page.counter(1), bytes: page.counter(2), page, thread_creds };
    let up = |m: &Up| {
        if let Err(e) = send(ctl, m, &[]) {
            tracing::warn!(%e, "cannot reach omd");
        }
    };
    let events = |e: Event| match e {
        Event::Exited { code, signal } => up(&Up::Exited { code, signal }),
        Event::Lost(why) => up(&Up::Lost(why)),
        Event::Stopped(_) | Event::GoingHome(_) | Event::PreCopy(_) => {}
    };
    let mut bufs = Buffers::with_sole(sole);
    let mut cipher: Option<Arc<Cipher>> = None;
    let mut first = Vec::new();
    loop {
        let (m, fds) = recv::<Down>(ctl).map_err(|e| format!("omd went away: {e}"))?;
        let pos = match m {
            Down::Serve(pos) => pos,
            Down::Resume(ahead, pos) => {
                first = ahead;
                pos
            }
            Down::Switch(k, pos) => {
                let fd = fds.into_iter().next().ok_or("a new link without its socket")?;
                sys::dup3(fd.as_raw_fd(), r1, libc::O_CLOEXEC).map_err(|e| e.to_string())?;
                cipher = Some(Cipher::from_session(&k, &pos).map_err(|e| e.to_string())?);
                pos
            }
            Down::Stop => return Ok(()),
            Down::Setup(_) | Down::Fds => return Err("unexpected message from omd".into()),
        };
        let c = match &cipher {
            Some(c) => {
                c.set_pos(&pos);
                c.clone()
            }
            None => {
                let c = Cipher::from_session(&keys, &pos).map_err(|e| e.to_string())?;
                cipher = Some(c.clone());
                c
            }
        };
        // Reads go through a buffer (one read per frame). Whatever is read
        // ahead when the guest leaves goes back to omd.
        // Handles over r1, this process's link socket, released with
        // into_raw_fd (never closed).
        let mut link = dsys::stream_from(r1, c.clone());
        let chained =
            std::io::Read::chain(std::io::Cursor::new(std::mem::take(&mut first)), dsys::stream_from(r1, c.clone()));
        let mut rd = std::io::BufReader::with_capacity(1 << 16, chained);
        let ended = if lanes > 1 {
            serve::serve_lanes(&mut rd, &mut link, pid, res, &live, &events)
        } else {
            serve::serve_round(&mut rd, &mut link, pid, res, &live, &events, &mut bufs)
        };
        let mut ahead = rd.buffer().to_vec();
        let (cursor, stream) = rd.into_inner().into_inner();
        ahead.extend_from_slice(&cursor.get_ref()[cursor.position() as usize..]);
        let _ = stream.into_raw_fd();
        let _ = link.into_raw_fd();
        if let Ended::GoingHome = ended {
            up(&Up::GoingHome(ahead, c.pos()));
        }
    }
}
