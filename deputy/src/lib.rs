//! The home side of a migrated process.
//!
//! One controller thread per process does the migration out (freeze, capture,
//! ship, commit or roll back), then stays as the tracer of the parked
//! placeholder: it relays signals sent to the home pid, brings the process
//! back, and ends the placeholder with the process's exit status. A deputy
//! thread ([`serve`]) serves the forwarded calls.

mod ahead;
pub mod process;
pub mod serve;
pub mod sys;
mod tty;

use crossbeam::channel::{self, Receiver, Sender};
use om_runtime::image::{self, Target};
use om_runtime::link::{ClusterKey, Link};
use om_runtime::ptrace::{Running, Stop, Tracee};
use om_runtime::sys as rsys;
use om_runtime::transfer;
use om_runtime::wire::{self, Msg};
use process::Shared;
use serve::{Event, Release, Setup};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Requests from omd to a controller.
pub enum Ctl {
    /// Bring the process home; answer when it runs there.
    ComeHome(Sender<Result<(), String>>),
    /// Move the process from the node it is on straight to another one;
    /// `assumed` is the load the balancer believed `dest` had (negative: none).
    MoveTo { dest: u32, addr: SocketAddr, assumed: f64, reply: Sender<Result<(), String>> },
    /// The membership declared this node down.
    NodeDown(u32),
}

/// Who asked for a move or a return, waiting for the outcome.
pub type Reply = Sender<Result<(), String>>;

/// Where a failed move or return leaves the process.
enum After {
    /// It runs on where it was, and the deputy never stopped serving it
    /// (the failure came during the pre-copy).
    Serving,
    /// It runs on where it was: the deputy serves it again, these bytes
    /// (read past the move on the call link) first.
    Resume(Vec<u8>),
    /// It is lost (the call link broke during the move).
    Lost,
}

/// A failed move between nodes: the reason, and where it leaves the process.
type RelayError = (String, After);

/// How the controller reports the process's state to omd: (pid, state, where).
pub type StateFn = Arc<dyn Fn(i32, &str, u32) + Send + Sync>;

/// What a migration needs to know.
pub struct Plan {
    pub pid: i32,
    pub home: u32,
    pub dest: u32,
    pub addr: SocketAddr,
    /// The cluster key, for the links to the destination.
    pub key: ClusterKey,
    /// The load the balancer believed `dest` had (negative: a manual move).
    pub assumed: f64,
    /// What the process uses while away, for the balancer.
    pub usage: Arc<Usage>,
    /// The gang it moves with (itself alone: one member).
    pub gang: Arc<Gang>,
}

/// A gang moving out together ([`om_runtime::gang`]): its members (home
/// pids, sorted), the token its offers carry, and where they meet.
pub struct Gang {
    pub token: u64,
    pub members: Vec<i32>,
    pub sync: om_runtime::gang::Sync,
}

impl Gang {
    /// A process that moves alone.
    pub fn alone(pid: i32) -> Arc<Gang> {
        Arc::new(Gang { token: 0, members: vec![pid], sync: om_runtime::gang::Sync::new(1) })
    }

    /// The processes `members` moving together.
    pub fn of(members: Vec<i32>) -> Arc<Gang> {
        let n = members.len();
        Arc::new(Gang { token: random_token(), members, sync: om_runtime::gang::Sync::new(n) })
    }

    fn together(&self) -> bool {
        self.members.len() > 1
    }
}

/// What a process away uses: calls it sends home (counted by the deputy) and
/// the CPU and memory its host reports.
#[derive(Default, Debug)]
pub struct Usage {
    pub calls: AtomicU64,
    pub bytes: AtomicU64,
    /// Run plus run-queue wait, ns, as last reported by the host (restarts
    /// from zero on each host).
    pub cpu_ns: AtomicU64,
    /// Run time alone, ns, as last reported.
    pub run_ns: AtomicU64,
    pub rss: AtomicU64,
    /// Reports received.
    pub reports: AtomicU64,
}

pub use om_runtime::sys::wake_signal;

/// Run in a dedicated thread: migrate the process, answer `reply`, then
/// control it until it ends or comes home.
pub fn migrate_and_control(plan: Plan, reply: Sender<Result<(), String>>, ctl: Receiver<Ctl>, state: StateFn) {
    let span = tracing::info_span!("migration", pid = plan.pid, to = plan.dest);
    let _g = span.enter();
    let moved = migrate_out(&plan);
    if let Err(e) = &moved {
        if e.ended {
            // The others move on without it.
            plan.gang.sync.leave();
        } else {
            plan.gang.sync.fail(&format!("process {} of the gang could not move: {}", e.pid, e.reason));
        }
    }
    match moved {
        Ok(away) => {
            state(plan.pid, "away", plan.dest);
            let _ = reply.send(Ok(()));
            away.control(&plan, ctl, &state);
        }
        Err(e) => {
            tracing::warn!(pid = e.pid, node = e.node, step = e.step, reason = e.reason, "the process stays at home");
            state(plan.pid, "home", plan.home);
            let _ = reply.send(Err(e.to_string()));
        }
    }
}

struct Away {
    /// Forwarded calls and the way home.
    link: Link,
    /// Signals, come-home and kill requests for the supervisor; from it,
    /// stops, usage and the pre-copy of a move away from its node.
    ctl_link: Link,
    /// Lets the control link's reader go on after a pre-copy.
    ctl_resume: Sender<()>,
    shared: Arc<Shared>,
    events: Receiver<Event>,
    release: Sender<Release>,
    /// For new control-link readers after a move.
    events_tx: Sender<Event>,
    scratch: u64,
    /// The placeholder's other threads (home tids), parked and traced.
    threads: Vec<i32>,
    fds_res: i32,
    key: ClusterKey,
}

/// Why a move out failed: the process runs on at home. Carries the pid, the
/// node and the step; its text (what omctl prints) names the cause.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct MoveError {
    pub pid: i32,
    pub node: u32,
    pub step: &'static str,
    pub reason: String,
    /// The process ended on the way (nothing stays at home).
    pub ended: bool,
}

/// A process frozen at home for a move out. Dropped, it is resumed where it
/// was (the scratch area removed once one was mapped, the restart state
/// repaired); only [`Frozen::commit`] keeps it stopped for parking.
struct Frozen {
    /// Every thread, the leader first; empty once committed.
    threads: Vec<Tracee>,
    /// The capture's scratch area, and the timers it stopped.
    scratch: Option<(u64, om_runtime::timers::Timers)>,
}

impl Frozen {
    fn threads(&mut self) -> &mut [Tracee] {
        assert!(!self.threads.is_empty(), "a frozen process has its threads until commit");
        &mut self.threads
    }

    /// The capture mapped a scratch area: a rollback removes it.
    fn captured(&mut self, scratch: u64, timers: &om_runtime::timers::Timers) {
        self.scratch = Some((scratch, timers.clone()));
    }

    /// The move is done: hand the stopped threads over (they are parked next).
    fn commit(mut self) -> Vec<Tracee> {
        std::mem::take(&mut self.threads)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let mut threads = std::mem::take(&mut self.threads);
        let Some(t) = threads.first_mut() else { return };
        let pid = t.pid;
        if let Some((s, timers)) = self.scratch.take() {
            if let Err(e) = image::rollback(t, s, &timers) {
                tracing::error!(%e, pid, "cannot remove the scratch area");
            }
        }
        let mut resumed = true;
        for t in threads {
            let tid = t.pid;
            if let Err(e) = t.detach() {
                tracing::error!(%e, pid, tid, "cannot resume a thread of the process at home");
                resumed = false;
            }
        }
        if resumed {
            tracing::warn!(pid, "migration rolled back; the process runs at home");
        }
    }
}

fn migrate_out(plan: &Plan) -> Result<Away, MoveError> {
    let pid = plan.pid;
    let err = |step: &'static str, reason: String| MoveError { pid, node: plan.dest, step, reason, ended: false };
    let gang = &plan.gang;
    if let Some(why) = image::cant_move(pid, &gang.members) {
        return Err(err("checks", format!("process {pid} cannot migrate: {why}")));
    }
    // Where the gang's members wait for each other; a failure of another
    // member reads as the reason this one stays.
    let meet = |at: u32, step: &'static str| {
        gang.sync.arrive(at).map_err(|why| err(step, format!("process {pid} stays at home with its gang: {why}")))
    };
    let started = std::time::Instant::now();
    let connect = || {
        Link::connect(plan.addr, &plan.key, plan.home, Duration::from_secs(3))
            .map_err(|e| err("connect", format!("node {}: {e}; the process stays at home", plan.dest)))
    };
    let mut link = connect()?;
    let net = |step: &'static str| {
        move |e: wire::WireError| {
            err(step, format!("link to node {} failed: {e}; the process stays at home", plan.dest))
        }
    };
    let token = random_token();
    wire::send(&mut link, &Msg::Hello { node: plan.home }).map_err(net("offer"))?;
    let offer = transfer::offer(pid, plan.home, token, plan.assumed, (gang.token, gang.members.len() as u32));
    wire::send(&mut link, &offer).map_err(net("offer"))?;
    let reopen = match wire::recv_msg(&mut link).map_err(net("offer"))? {
        Msg::OfferOk { reopen } => reopen,
        Msg::Refused { reason } => {
            return Err(err("offer", format!("node {} refused the migration: {reason}", plan.dest)))
        }
        m => return Err(err("offer", format!("node {} answered {m:?} to the offer", plan.dest))),
    };
    // The second link: signals and requests for the guest's supervisor.
    let mut ctl_link = connect()?;
    wire::send(&mut ctl_link, &Msg::Hello { node: plan.home }).map_err(net("control link"))?;
    wire::send(&mut ctl_link, &Msg::Attach { token }).map_err(net("control link"))?;
    let files = image::mapped_files(pid);
    let same = |p: &str| files.iter().zip(&reopen).any(|((q, _), ok)| *ok && q == p);

    // Pre-copy while the process runs: the destination lays out and fills
    // its memory now, outside the freeze.
    let program = exec_id(pid);
    let mut pre = image::pre_image(pid, &same)
        .map_err(|e| err("pre-copy", format!("cannot read process {pid}'s memory: {e}")))?;
    if gang.together() {
        image::keep_no_shared(&mut pre).map_err(|why| err("checks", format!("process {pid} cannot migrate: {why}")))?;
    }
    // Rounds of what it writes meanwhile follow the first copy, while they
    // shrink (userfaultfd write tracking; without it, the freeze compares
    // page hashes).
    let dirty = om_runtime::dirty::Dirty::track(pid);
    let mut sent =
        transfer::send_precopy(&mut link, pid, pre, image::ReadMode::Unpinned, dirty).map_err(net("pre-copy"))?;
    tracing::info!(
        bytes = sent.image.data_bytes(),
        rounds = ?sent.round_bytes,
        round_ms = ?sent.round_ms,
        tracked = sent.tracked(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "pre-copied"
    );
    // A gang freezes together once every member is pre-copied.
    meet(1, "pre-copy")?;

    // Freeze. From here every early return resumes the process at home.
    let freeze = std::time::Instant::now();
    let threads = om_runtime::ptrace::seize_all(pid, false).map_err(|e| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let f = |k| om_runtime::procfs::status_field_in(&st, k).unwrap_or_default();
        if st.is_empty() || f("State").starts_with('Z') {
            // Where its gang arrives, one less is waited for.
            let _ = wire::send(&mut link, &Msg::RestoreFailed { reason: om_runtime::gang::ENDED.into() });
            MoveError { ended: true, ..err("freeze", format!("process {pid} ended before it could move")) }
        } else {
            err(
                "freeze",
                format!("cannot freeze process {pid} (state {}, traced by {}): {e}", f("State"), f("TracerPid")),
            )
        }
    })?;
    let seized_ms = freeze.elapsed().as_secs_f64() * 1e3;
    let mut frozen = Frozen { threads, scratch: None };
    // Shared pages are read once every member is frozen.
    meet(2, "freeze")?;
    // Checked again now that it is frozen: it may have started a thread or
    // mapped shared memory during the pre-copy.
    if let Some(why) = image::cant_move_frozen(pid, &gang.members) {
        return Err(err("checks", format!("process {pid} cannot migrate: {why}")));
    }
    // A new program (execve) since the pre-copy: that copy is of another
    // address space.
    if exec_id(pid) != program {
        return Err(err(
            "checks",
            format!("process {pid} started a new program during the migration; it stays at home (try again)"),
        ));
    }
    let checked_ms = freeze.elapsed().as_secs_f64() * 1e3;
    let mut cap = image::capture(frozen.threads(), &same)
        .map_err(|e| err("capture", format!("cannot capture process {pid}: {e}")))?;
    let image_ms = freeze.elapsed().as_secs_f64() * 1e3;
    frozen.captured(cap.scratch, &cap.image.timers);
    if gang.together() {
        image::keep_owned(&mut cap.image, pid, &gang.members)
            .map_err(|why| err("checks", format!("process {pid} cannot migrate: {why}")))?;
    }
    transfer::log_shared(pid, &cap.image, "captured");
    match transfer::prune(pid, &mut cap.image, &mut sent, image::ReadMode::Unpinned) {
        Ok(skipped) => tracing::info!(
            seized_ms,
            checked_ms,
            image_ms,
            capture_ms = freeze.elapsed().as_secs_f64() * 1e3,
            unchanged_pages = skipped,
            resent_bytes = cap.image.data_bytes(),
            "captured"
        ),
        Err(e) => return Err(err("capture", format!("cannot read process {pid}'s memory: {e}"))),
    }

    // The deputy, a process of its own, takes the fds now, while the process is frozen.
    let shared = Arc::new(Shared::new(plan.usage.clone()));
    let (ev_tx, ev_rx) = channel::unbounded();
    let (rel_tx, rel_rx) = channel::bounded(1);
    let mut setup = Setup::from_image(&cap.image);
    setup.sole = om_runtime::procfs::sole_readers(pid);
    let ctl_resume = read_control_link(&ctl_link, pid, ev_tx.clone(), plan.usage.clone())
        .map_err(|e| err("deputy", format!("cannot clone the control link: {e}")))?;
    let events_tx = ev_tx.clone();
    process::start(&link, setup, shared.clone(), ev_tx, rel_rx).map_err(|e| err("deputy", e))?;
    let deputy_ms = freeze.elapsed().as_secs_f64() * 1e3;
    // The deputy stops with any failure below.
    let stop_deputy = |e: MoveError| {
        let _ = rel_tx.send(Release::Stop);
        e
    };
    let sent = transfer::send_image(&mut link, pid, &cap.image, image::ReadMode::Unpinned).map_err(|e| {
        stop_deputy(err(
            "image",
            format!("sending the image to node {} failed: {e}; the process stays at home", plan.dest),
        ))
    })?;
    let sent_ms = freeze.elapsed().as_secs_f64() * 1e3;
    match wire::recv_msg(&mut link) {
        Ok(Msg::Resumed { guest }) => {
            tracing::info!(
                guest,
                bytes = sent,
                deputy_ms,
                sent_ms,
                freeze_ms = freeze.elapsed().as_secs_f64() * 1e3,
                total_ms = started.elapsed().as_secs_f64() * 1e3,
                "migrated"
            );
        }
        Ok(Msg::RestoreFailed { reason }) => {
            return Err(stop_deputy(err(
                "rebuild",
                format!("node {} could not rebuild the process: {reason}; it stays at home", plan.dest),
            )));
        }
        Ok(m) => {
            return Err(stop_deputy(err(
                "rebuild",
                format!("node {} answered {m:?}; the process stays at home", plan.dest),
            )));
        }
        Err(e) => {
            return Err(stop_deputy(err(
                "rebuild",
                format!("node {} failed during the migration ({e}); the process stays at home", plan.dest),
            )));
        }
    }
    // Commit: the placeholder keeps pid, parent, session and terminal, nothing else.
    let mut threads = frozen.commit();
    let pending_signals: Vec<i32> = threads.iter_mut().flat_map(|t| std::mem::take(&mut t.deferred)).collect();
    // Signals queued at home now moved with the image: the placeholder
    // must not take them again. Any that arrived since the capture go on.
    let mut arrived = Vec::new();
    for t in threads.iter_mut() {
        t.syscall_ip = cap.scratch;
        match image::take_queued(t, cap.scratch + 1024) {
            Ok(q) => arrived.extend(q.into_iter().map(|i| (t.pid, i))),
            Err(e) => tracing::warn!(%e, "cannot take the placeholder's queued signals"),
        }
    }
    // The leader takes the process's queue too: a signal there is for the
    // process unless it was sent to the leader (tkill or tgkill).
    let arrived: Vec<(i32, Vec<u8>)> = image::arrived_since(&cap.image, arrived)
        .into_iter()
        .map(|(tid, info)| (if tid == pid && !rsys::siginfo_is_tkill(&info) { 0 } else { tid }, info))
        .collect();
    // The process runs there now: the deputy serves it while the
    // placeholder is parked (unmapping a large memory takes a while).
    let _ = rel_tx.send(Release::Serve);
    // The other threads first: the kernel writes each thread's rseq area
    // whenever it returns to user space, so none may stay registered once
    // the leader's park unmaps the memory.
    let parked = threads
        .iter_mut()
        .zip(&cap.image.threads)
        .skip(1)
        .try_for_each(|(o, th)| image::park_thread(o, th, cap.scratch))
        .and_then(|_| image::park(&mut threads[0], &cap.image, cap.scratch))
        .and_then(|_| threads.iter().try_for_each(|t| t.resume_traced()));
    if let Err(e) = parked {
        tracing::error!(%e, "parking the home placeholder failed");
    }
    let away = Away {
        link,
        ctl_link,
        ctl_resume,
        shared,
        events: ev_rx,
        release: rel_tx,
        events_tx,
        scratch: cap.scratch,
        threads: cap.image.threads[1..].iter().map(|t| t.tid).collect(),
        fds_res: serve::reserved_base(),
        key: plan.key.clone(),
    };
    for sig in pending_signals {
        away.send(&Msg::Signal { sig, info: Vec::new(), tid: 0 });
    }
    for (tid, info) in arrived {
        let sig = i32::from_le_bytes([info[0], info[1], info[2], info[3]]);
        away.send(&Msg::Signal { sig, info, tid });
    }
    Ok(away)
}

impl Away {
    /// The node hosting the process is gone: the placeholder dies by SIGKILL
    /// (so the parent sees the process killed) and the deputy stops.
    fn lose(&self, pid: i32, home: u32, state: &StateFn) {
        let _ = rsys::kill(pid, libc::SIGKILL);
        let _ = self.release.send(Release::Stop);
        let _ = self.link.shutdown(std::net::Shutdown::Both);
        state(pid, "exited", home);
    }

    /// Whether both links heard their peer in the last `ms` milliseconds.
    fn links_heard_within(&self, ms: u32) -> bool {
        [&self.link, &self.ctl_link].iter().all(|l| l.last_heard_ms().is_some_and(|t| t < ms))
    }

    /// A request for the supervisor, on the control link.
    fn send(&self, m: &Msg) {
        if let Err(e) = wire::send(&mut &self.ctl_link, m) {
            tracing::warn!(%e, "cannot reach the remote");
        }
    }

    /// Wake the deputy out of a blocking call, so a signal or a come-home
    /// request is not held up by it.
    fn interrupt_deputy(&self) {
        let id = self.shared.busy();
        if id == 0 {
            return;
        }
        for _ in 0..200 {
            self.shared.interrupt();
            std::thread::sleep(Duration::from_millis(2));
            if self.shared.busy() != id {
                return;
            }
        }
    }

    fn control(mut self, plan: &Plan, ctl: Receiver<Ctl>, state: &StateFn) {
        let pid = plan.pid;
        let mut waiting_home: Option<Sender<Result<(), String>>> = None;
        // A stop signal we sent the placeholder ourselves, to deliver, not forward.
        let mut injected_stop: Option<i32> = None;
        // A move to another node under way: (node, address, who to answer).
        let mut moving: Option<(u32, SocketAddr, f64, Reply)> = None;
        // A request read just before a GoingHome was taken as its cause.
        let mut rechecked = false;
        let mut here = plan.dest;
        // The last call the deputy was woken out of while the process is
        // asked to leave its node: a call that reached the deputy after the
        // request (it raced with it) is woken too.
        // Woken again every 20 ms while it stays in that call: a wake-up that
        // lands just before the deputy enters a blocking call is lost.
        let mut kicked = 0u64;
        let mut kicked_at = std::time::Instant::now();
        loop {
            if waiting_home.is_some() || moving.is_some() {
                let id = self.shared.busy();
                if id != 0 && (id != kicked || kicked_at.elapsed() >= Duration::from_millis(20)) {
                    self.shared.interrupt();
                    kicked = id;
                    kicked_at = std::time::Instant::now();
                }
            }
            // Requests from omd.
            match ctl.try_recv() {
                Ok(Ctl::ComeHome(r)) => {
                    self.send(&Msg::ComeHome);
                    self.interrupt_deputy();
                    waiting_home = Some(r);
                }
                Ok(Ctl::MoveTo { dest, addr, assumed, reply }) => {
                    self.send(&Msg::ComeHome);
                    self.interrupt_deputy();
                    moving = Some((dest, addr, assumed, reply));
                }
                Ok(Ctl::NodeDown(n)) if n == here && self.links_heard_within(2000) => {
                    // Gossip can be late under load; a link that still hears
                    // its peer proves the node alive.
                    tracing::warn!(
                        node = n,
                        "membership says node {n} is down, but its link still answers; keeping the process"
                    );
                }
                Ok(Ctl::NodeDown(n)) if n == here => {
                    tracing::error!(node = n, "node {n}, which hosted the process, is down; killing it at home");
                    return self.lose(pid, plan.home, state);
                }
                Ok(Ctl::NodeDown(_)) => {}
                Err(_) => {}
            }
            // Events from the deputy.
            match self.events.recv_timeout(Duration::from_millis(5)) {
                Ok(Event::Exited { code, signal }) => {
                    end_placeholder(pid, &self.threads, self.scratch, code, signal);
                    let _ = self.release.send(Release::Stop);
                    state(pid, "exited", plan.home);
                    if let Some(r) = waiting_home {
                        let _ = r.send(Err(format!("process {pid} exited before it came home")));
                    }
                    return;
                }
                Ok(Event::Stopped(sig)) => {
                    tracing::info!(pid, sig, "the process stopped away; stopping the placeholder");
                    // The guest stopped: stop the placeholder with the same
                    // signal, so the parent (a shell) sees it.
                    injected_stop = Some(sig);
                    let _ = rsys::tgkill(pid, pid, sig);
                }
                // A gang member sent off by another before its own request
                // to move on was read: the request decides where it goes.
                Ok(Event::PreCopy(offer)) if moving.is_none() && waiting_home.is_none() && !rechecked => {
                    rechecked = true;
                    match ctl.try_recv() {
                        Ok(Ctl::MoveTo { dest, addr, assumed, reply }) => moving = Some((dest, addr, assumed, reply)),
                        Ok(Ctl::ComeHome(r)) => waiting_home = Some(r),
                        _ => {}
                    }
                    self.events_tx.send(Event::PreCopy(offer)).ok();
                    continue;
                }
                Ok(Event::PreCopy(offer)) if moving.is_some() => {
                    rechecked = false;
                    let Some((dest, addr, assumed, reply)) = moving.take() else { continue };
                    state(pid, "migrating", here);
                    match self.relay_move(pid, plan.home, (dest, addr, assumed), offer) {
                        Ok(()) => {
                            here = dest;
                            state(pid, "away", dest);
                            let _ = reply.send(Ok(()));
                        }
                        Err((why, After::Lost)) => {
                            tracing::error!(why, "lost the process while moving it; killing it at home");
                            let _ = rsys::kill(pid, libc::SIGKILL);
                            let _ = self.release.send(Release::Stop);
                            state(pid, "exited", plan.home);
                            let _ = reply.send(Err(why));
                            return;
                        }
                        Err((why, after)) => {
                            // The move failed but the process runs on where it was.
                            if let After::Resume(ahead) = after {
                                let _ = self.release.send(Release::Resume(ahead));
                            }
                            state(pid, "away", here);
                            let _ = reply.send(Err(why));
                        }
                    }
                }
                Ok(Event::PreCopy(offer)) => {
                    rechecked = false;
                    state(pid, "returning", plan.home);
                    match self.come_home(pid, here, offer) {
                        Ok(()) => {
                            let _ = self.release.send(Release::Stop);
                            state(pid, "home", plan.home);
                            if let Some(w) = waiting_home.take() {
                                let _ = w.send(Ok(()));
                            }
                            return;
                        }
                        Err((e, After::Lost)) => {
                            tracing::error!(%e, "killing the process at home");
                            let _ = self.release.send(Release::Stop);
                            let _ = rsys::kill(pid, libc::SIGKILL);
                            state(pid, "exited", plan.home);
                            if let Some(w) = waiting_home.take() {
                                let _ = w.send(Err(e.to_string()));
                            }
                            return;
                        }
                        Err((e, after)) => {
                            // It runs on where it was; the deputy serves it (again).
                            tracing::warn!(%e, "the process stays away");
                            if let After::Resume(ahead) = after {
                                let _ = self.release.send(Release::Resume(ahead));
                            }
                            state(pid, "away", here);
                            if let Some(w) = waiting_home.take() {
                                let _ = w.send(Err(e.to_string()));
                            }
                        }
                    }
                }
                // Only after a pre-copy home knows of (see `come_home`).
                Ok(Event::GoingHome(ahead)) => match self.refuse_unexpected(pid, ahead) {
                    After::Resume(ahead) => {
                        let _ = self.release.send(Release::Resume(ahead));
                    }
                    _ => {
                        tracing::error!(pid, "the link to node {here} failed; killing the process at home");
                        return self.lose(pid, plan.home, state);
                    }
                },
                Ok(Event::Lost(why)) => {
                    tracing::error!(why, node = here, "lost node {here}, which hosted the process; killing it at home");
                    return self.lose(pid, plan.home, state);
                }
                Err(_) => {}
            }
            // Signals to the placeholder's other threads (tgkill from home).
            for &tid in &self.threads {
                let t = Running { tid };
                match t.poll() {
                    Some(Stop::Signal { sig, info }) => {
                        tracing::debug!(pid, tid, sig, "relaying a signal to a thread");
                        self.send(&Msg::Signal { sig, info, tid });
                        if sig != libc::SIGCONT && !rsys::is_stop_signal(sig) {
                            self.interrupt_deputy();
                        }
                        t.resume(0);
                    }
                    // With the leader, until SIGCONT.
                    Some(Stop::Group(sig)) if rsys::is_stop_signal(sig) => t.listen(),
                    Some(Stop::Group(_) | Stop::Trap) => t.resume(0),
                    Some(Stop::Ended(_)) | None => {}
                }
            }
            // Signals sent to the home pid.
            let leader = Running { tid: pid };
            match leader.poll() {
                None => {}
                // Group-stop: stay stopped (the parent was told) until SIGCONT.
                Some(Stop::Group(sig)) if rsys::is_stop_signal(sig) => leader.listen(),
                Some(Stop::Group(_) | Stop::Trap) => leader.resume(0),
                Some(Stop::Signal { sig, .. }) if injected_stop == Some(sig) => {
                    injected_stop = None;
                    leader.resume(sig);
                }
                Some(Stop::Signal { sig, info }) => {
                    tracing::debug!(pid, sig, "relaying a signal");
                    // A terminal stop signal to an orphaned process group
                    // is dropped natively unless handled; the remote,
                    // which knows the handlers, decides (negative number).
                    let tty_stop = matches!(sig, libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU);
                    let sig = if tty_stop && om_runtime::procfs::pgrp_orphaned(pid) { -sig } else { sig };
                    // Its siginfo too: sender, code and value arrive as sent;
                    // to the leader alone (tkill, tgkill), or to the process.
                    let tid = if rsys::siginfo_is_tkill(&info) { pid } else { 0 };
                    self.send(&Msg::Signal { sig, info, tid });
                    if sig != libc::SIGCONT && !rsys::is_stop_signal(sig) {
                        self.interrupt_deputy();
                    }
                    leader.resume(0);
                }
                Some(Stop::Ended(_)) => {
                    // The placeholder died (SIGKILL at home): the process dies with it.
                    self.send(&Msg::Kill);
                    self.interrupt_deputy();
                    let _ = self.release.send(Release::Stop);
                    state(pid, "exited", plan.home);
                    return;
                }
            }
        }
    }

    /// The process's node is sending it "home": relay it to node `dest`
    /// instead, then switch the deputy to the new link. The pre-copy comes
    /// on the control link while the deputy goes on serving the process;
    /// the final image on the call link after `GoingHome`. On failure: why,
    /// and where that leaves the process.
    fn relay_move(
        &mut self,
        pid: i32,
        home: u32,
        (dest, addr, assumed): (u32, SocketAddr, f64),
        offer: Msg,
    ) -> Result<(), RelayError> {
        let r = self.relay_pre(home, (dest, addr, assumed), offer);
        // The control link's reader goes on, whatever happened.
        let _ = self.ctl_resume.send(());
        let (mut to, ctl2) = r?;
        let ahead = match self.await_going_home() {
            Ok(a) => a,
            Err(ev) => {
                // The new node drops what it built (a gang arriving there
                // goes on without a member that ended).
                let why = match ev {
                    Some(ev) => {
                        let _ = self.events_tx.send(ev);
                        let _ = wire::send(&mut to, &Msg::RestoreFailed { reason: om_runtime::gang::ENDED.into() });
                        om_runtime::gang::ENDED
                    }
                    None => "the process did not freeze within a minute",
                };
                return Err((format!("{why} (before it froze); nothing moved"), After::Serving));
            }
        };
        self.relay_final(pid, dest, ahead, to, ctl2)
    }

    /// The offer and the pre-copy, from the control link to node `dest`.
    /// Returns the links to it (calls, control).
    fn relay_pre(
        &mut self,
        home: u32,
        (dest, addr, assumed): (u32, SocketAddr, f64),
        offer: Msg,
    ) -> Result<(Link, Link), RelayError> {
        let Msg::Offer { pid, files, vdso_hash, vdso_len, xsave, gang, .. } = offer else {
            return Err(("no offer from the node".into(), After::Serving));
        };
        let mut from = match self.ctl_link.try_clone() {
            Ok(l) => l,
            Err(e) => return Err((format!("control link: {e}"), After::Serving)),
        };
        let back = &self.ctl_link;
        // Refuse to the old node (it keeps the process) when the new one cannot start.
        let refuse = |why: String| -> RelayError {
            let _ = wire::send(&mut &*back, &Msg::Refused { reason: why.clone() });
            (why, After::Serving)
        };
        let token = random_token();
        let connect = || Link::connect(addr, &self.key, home, Duration::from_secs(3));
        let mut to = match connect() {
            Ok(s) => s,
            Err(e) => return Err(refuse(format!("node {dest}: {e}; the process stays where it is"))),
        };
        // A gang's members arrive together there as they left together here.
        let o = Msg::Offer { pid, home, token, files, vdso_hash, vdso_len, xsave, assumed, gang };
        let answer = match wire::send(&mut to, &Msg::Hello { node: home })
            .and_then(|_| wire::send(&mut to, &o))
            .and_then(|_| wire::recv_msg(&mut to))
        {
            Ok(a @ Msg::OfferOk { .. }) => a,
            Ok(Msg::Refused { reason }) => return Err(refuse(format!("node {dest} refused the migration: {reason}"))),
            Ok(m) => return Err(refuse(format!("node {dest} answered {m:?}"))),
            Err(e) => return Err(refuse(format!("link to node {dest} failed: {e}"))),
        };
        let ctl2 = connect().map_err(std::io::Error::other).and_then(|mut c| {
            wire::send(&mut c, &Msg::Hello { node: home }).map_err(std::io::Error::other)?;
            wire::send(&mut c, &Msg::Attach { token }).map_err(std::io::Error::other)?;
            Ok(c)
        });
        let ctl2 = match ctl2 {
            Ok(c) => c,
            Err(e) => return Err(refuse(format!("node {dest} at {addr} is unreachable: {e}"))),
        };
        if let Err(e) = wire::send(&mut &*back, &answer) {
            return Err((format!("link to the process's node failed: {e}"), After::Serving));
        }
        // The pre-copy, read to its end whatever fails on the way to the
        // new node; then the old node is told (it never freezes).
        let mut why: Option<String> = None;
        match relay_stream(&mut from, &mut to, dest, &mut why, None)
            .and_then(|_| relay_rounds(&mut from, &mut to, dest, &mut why))
        {
            Ok(()) => {}
            Err(Relayed::GaveUp(reason)) => {
                return Err((format!("the old node could not send the process: {reason}"), After::Serving))
            }
            Err(Relayed::From(e)) => return Err((format!("from the old node: {e}"), After::Serving)),
        }
        let m = match &why {
            Some(w) => Msg::RestoreFailed { reason: w.clone() },
            None => Msg::PreOk,
        };
        if let Err(e) = wire::send(&mut &*back, &m) {
            return Err((format!("link to the process's node failed: {e}"), After::Serving));
        }
        match why {
            Some(w) => Err((format!("{w}; the process stays where it was"), After::Serving)),
            None => Ok((to, ctl2)),
        }
    }

    /// The final image, from the call link to the new node; then the switch.
    fn relay_final(&mut self, pid: i32, dest: u32, ahead: Vec<u8>, mut to: Link, ctl2: Link) -> Result<(), RelayError> {
        let mut from = std::io::Read::chain(std::io::Cursor::new(ahead), &self.link);
        let left = |from: std::io::Chain<std::io::Cursor<Vec<u8>>, &Link>| {
            let (c, _) = from.into_inner();
            c.get_ref()[c.position() as usize..].to_vec()
        };
        let back = &self.link;
        let mut why: Option<String> = None;
        match relay_stream(&mut from, &mut to, dest, &mut why, Some(pid)) {
            Ok(()) => {}
            Err(Relayed::GaveUp(reason)) => {
                return Err((format!("the old node could not send the process: {reason}"), After::Resume(left(from))))
            }
            Err(Relayed::From(e)) => return Err((format!("from the old node: {e}"), After::Lost)),
        }
        if why.is_none() {
            why = match wire::recv_msg(&mut to) {
                Ok(Msg::Resumed { .. }) => None,
                Ok(Msg::RestoreFailed { reason }) => {
                    Some(format!("node {dest} could not rebuild the process: {reason}"))
                }
                Ok(m) => Some(format!("node {dest} answered {m:?}")),
                Err(e) => Some(format!("node {dest} failed: {e}")),
            };
        }
        if let Some(why) = why {
            // The old node rolls back and keeps running the process.
            return match wire::send(&mut &*back, &Msg::RestoreFailed { reason: why.clone() }) {
                Ok(()) => Err((format!("{why}; the process stays where it was"), After::Resume(left(from)))),
                Err(_) => Err((why, After::Lost)),
            };
        }
        if let Err(e) = wire::send(&mut &*back, &Msg::HomeOk) {
            tracing::warn!(%e, "the old node did not hear that the move is done");
        }
        drop(from);
        // Switch the deputy and the control link to the new node.
        let old = std::mem::replace(&mut self.link, to);
        let _ = std::mem::replace(&mut self.ctl_link, ctl2);
        match read_control_link(&self.ctl_link, pid, self.events_tx.clone(), self.shared.usage.clone()) {
            Ok(go_on) => self.ctl_resume = go_on,
            Err(e) => tracing::warn!(%e, "cannot read the new control link"),
        }
        let _ = self.release.send(Release::Switch(std::os::fd::AsRawFd::as_raw_fd(&self.link), self.link.cipher()));
        // The old link closes once the deputy holds the new one.
        std::thread::sleep(Duration::from_millis(50));
        drop(old);
        tracing::info!(pid, to = dest, "moved between nodes");
        Ok(())
    }

    /// The remote is sending the process back: rebuild it in the placeholder.
    /// The pre-copy comes on the control link while the deputy goes on
    /// serving the process's calls on the call link; it is laid out in the
    /// stopped placeholder. Then the remote freezes the process and sends
    /// `GoingHome` and the final image on the call link. A transaction:
    /// until home answers HomeOk the process runs on where it is, and any
    /// failure short of a broken call link after the freeze leaves it
    /// running there, with the placeholder parked again.
    fn come_home(&mut self, pid: i32, node: u32, offer: Msg) -> Result<(), (HomeError, After)> {
        let gave_up = |step: &'static str, reason: String| HomeError::NodeGaveUp { pid, node, step, reason };
        let Msg::Offer { files, vdso_hash, vdso_len, xsave, gang, .. } = offer else {
            let _ = self.ctl_resume.send(());
            return Err((gave_up("offer", "no offer".into()), After::Serving));
        };
        let mut pre_from = match self.ctl_link.try_clone() {
            Ok(r) => r,
            Err(e) => {
                let _ = self.ctl_resume.send(());
                return Err((gave_up("offer", e.to_string()), After::Serving));
            }
        };
        let answer = transfer::answer_offer(&files, vdso_hash, vdso_len, xsave);
        if let Err(e) = wire::send(&mut &self.ctl_link, &answer) {
            let _ = self.ctl_resume.send(());
            return Err((gave_up("answering the offer", e.to_string()), After::Serving));
        }
        if let Msg::Refused { reason } = answer {
            // The node keeps the process and sends nothing more.
            let _ = self.ctl_resume.send(());
            return Err((HomeError::Rebuild { pid, node, step: "offer", reason }, After::Serving));
        }
        let mut phase = Phase::PreHeader;
        let mut from: Option<FinalLink> = None;
        let mut t: Option<Tracee> = None;
        let mut others: Vec<Tracee> = Vec::new();
        let mut rs: Option<image::Restore> = None;
        let mut img_kept: Option<image::Image> = None;
        // A gang comes home together: its members meet before any runs here.
        let member = (gang.1 > 1).then(|| om_runtime::gang::Member::join(gang.0, gang.1));
        let r = self.rebuild_home(
            pid,
            (&mut pre_from, &mut from),
            (&mut t, &mut others),
            &mut rs,
            &mut img_kept,
            &mut phase,
            member.as_ref(),
        );
        match (&r, &member) {
            (Err(Step::GaveUp(_, reason)), Some(m)) if reason == om_runtime::gang::ENDED => m.gang.sync.leave(),
            (Err(Step::Ended(_)), Some(m)) => m.gang.sync.leave(),
            (Err(_), Some(m)) => m.gang.sync.fail(&format!("process {pid} could not be rebuilt at home")),
            _ => {}
        }
        drop(member);
        let pre_phase = phase < Phase::Awaiting;
        let left = |from: Option<FinalLink>| {
            from.map_or_else(Vec::new, |from| {
                let (c, _) = from.into_inner();
                c.get_ref()[c.position() as usize..].to_vec()
            })
        };
        // Whatever failed in the pre-copy, the control link's reader goes on.
        let resume = |s: &Self| {
            if pre_phase {
                let _ = s.ctl_resume.send(());
            }
        };
        let (step, reason) = match r {
            Ok(()) => return Ok(()),
            Err(Step::Link(step, e)) if pre_phase => {
                // The control link broke: if the node is gone, the call
                // link tells (the process is lost then).
                resume(self);
                self.unpark_failed(t, others, rs, img_kept.as_ref());
                return Err((gave_up(step, e.to_string()), After::Serving));
            }
            Err(Step::Link(step, e)) => {
                return Err((HomeError::Link { pid, node, step, reason: e.to_string() }, After::Lost));
            }
            Err(Step::Ended(ev)) => {
                // The process ended (or its node was lost) before it froze.
                self.unpark_failed(t, others, rs, img_kept.as_ref());
                return match ev {
                    Some(ev) => {
                        let _ = self.events_tx.send(ev);
                        Err((HomeError::Ended { pid, node }, After::Serving))
                    }
                    None => Err((
                        gave_up("waiting for the freeze", "it did not come within a minute".into()),
                        After::Serving,
                    )),
                };
            }
            Err(Step::GaveUp(step, reason)) => {
                resume(self);
                self.unpark_failed(t, others, rs, img_kept.as_ref());
                let after = if pre_phase { After::Serving } else { After::Resume(left(from)) };
                return Err((gave_up(step, reason), after));
            }
            Err(Step::Home(step, reason)) => (step, reason),
        };
        // Home failed: read the rest of what the node sends, then tell it;
        // it rolls back (or never freezes) and keeps running the process.
        tracing::warn!(pid, step, reason, "the process cannot be rebuilt at home; it stays on node {node}");
        let drained = if pre_phase {
            let d = drain_precopy(&mut pre_from, phase == Phase::PrePages);
            let d = d.and_then(|gave_up| {
                if !gave_up {
                    wire::send(&mut &self.ctl_link, &Msg::RestoreFailed { reason: reason.clone() })?;
                }
                Ok(())
            });
            resume(self);
            d.map(|_| After::Serving).or(Ok::<After, wire::WireError>(After::Serving))
        } else {
            let f = from.as_mut();
            let d = match (phase, f) {
                (Phase::AllRead, _) => Ok(false),
                (Phase::FinalPages, Some(f)) => drain_pages(f, true),
                (_, Some(f)) => drain_image(f),
                (_, None) => Ok(false),
            };
            d.and_then(|gave_up| {
                if !gave_up {
                    wire::send(&mut &self.link, &Msg::RestoreFailed { reason: reason.clone() })?;
                }
                Ok(After::Resume(left(from)))
            })
        };
        match drained {
            Ok(after) => {
                self.unpark_failed(t, others, rs, img_kept.as_ref());
                Err((HomeError::Rebuild { pid, node, step, reason }, after))
            }
            Err(e) => Err((HomeError::Link { pid, node, step, reason: e.to_string() }, After::Lost)),
        }
    }

    /// After the pre-copy: wait for the remote to freeze the process and
    /// hand over the call link (`GoingHome`: the bytes the deputy read past
    /// it), waking the deputy out of a call the process waits in. Err: the
    /// process ended, or its node was lost, first (that event, for the
    /// control loop); or no freeze came within a minute.
    fn await_going_home(&self) -> Result<Vec<u8>, Option<Event>> {
        let until = std::time::Instant::now() + Duration::from_secs(60);
        let mut kicked = (0u64, std::time::Instant::now());
        let mut deferred = Vec::new();
        let r = loop {
            let id = self.shared.busy();
            if id != 0 && (id != kicked.0 || kicked.1.elapsed() >= Duration::from_millis(20)) {
                self.shared.interrupt();
                kicked = (id, std::time::Instant::now());
            }
            match self.events.recv_timeout(Duration::from_millis(5)) {
                Ok(Event::GoingHome(ahead)) => break Ok(ahead),
                Ok(e @ (Event::Exited { .. } | Event::Lost(_))) => break Err(Some(e)),
                Ok(e) => deferred.push(e),
                Err(_) if std::time::Instant::now() < until => {}
                Err(_) => break Err(None),
            }
        };
        for e in deferred {
            let _ = self.events_tx.send(e);
        }
        r
    }

    /// A `GoingHome` without a pre-copy before it (or after home gave up
    /// waiting for it): read what the node sends, refuse, and serve again.
    fn refuse_unexpected(&self, pid: i32, ahead: Vec<u8>) -> After {
        tracing::warn!(pid, "the process's node sent it without a pre-copy home knows of; refusing");
        let Ok(reader) = self.link.try_clone() else { return After::Lost };
        let mut from = std::io::Read::chain(std::io::Cursor::new(ahead), reader);
        let refused = drain_image(&mut from).and_then(|gave_up| {
            if !gave_up {
                let reason = "home was not expecting the process (no pre-copy); it stays where it is".to_string();
                wire::send(&mut &self.link, &Msg::RestoreFailed { reason })?;
            }
            Ok(())
        });
        match refused {
            Ok(()) => {
                let (c, _) = from.into_inner();
                After::Resume(c.get_ref()[c.position() as usize..].to_vec())
            }
            Err(_) => After::Lost,
        }
    }

    /// After a failed return: park the placeholder again and let it run
    /// (still traced); the scratch area it now uses is remembered.
    fn unpark_failed(
        &mut self,
        t: Option<Tracee>,
        others: Vec<Tracee>,
        rs: Option<image::Restore>,
        img: Option<&image::Image>,
    ) {
        let Some(mut t) = t else { return };
        let scratch = rs.as_ref().map_or(self.scratch, |r| r.scratch);
        // Other threads stopped for the rebuild are parked again (with the
        // rseq area the image gave them, if it got that far), before the
        // leader's repark unmaps the memory their rseq areas are in.
        for mut o in others {
            let th = img.and_then(|i| i.threads.iter().find(|th| th.tid == o.pid)).cloned().unwrap_or_else(|| {
                image::ThreadState {
                    tid: o.pid,
                    regs: image::regs_to_array(&o.saved),
                    xstate: Vec::new(),
                    sigmask: 0,
                    rseq: (0, 0, 0),
                    robust: (0, 0),
                    altstack: (0, 0, libc::SS_DISABLE),
                    clear_tid: 0,
                    comm: String::new(),
                    queued: Vec::new(),
                }
            });
            if let Err(e) = image::park_thread(&mut o, &th, scratch).and_then(|_| o.resume_traced()) {
                tracing::error!(%e, tid = o.pid, "cannot park a thread of the placeholder again");
            }
        }
        let empty;
        let img = match img {
            Some(i) => i,
            None => {
                empty = image::pre_image(t.pid, &|_| false).ok();
                match &empty {
                    Some(i) => i,
                    None => {
                        let _ = t.resume_traced();
                        return;
                    }
                }
            }
        };
        match image::repark(&mut t, img, scratch) {
            Ok(()) => self.scratch = scratch,
            Err(e) => tracing::error!(%e, "cannot park the placeholder again"),
        }
        if let Err(e) = t.resume_traced() {
            tracing::error!(%e, "cannot resume the placeholder");
        }
    }

    /// The steps of a return home after the offer (see [`Away::come_home`]).
    #[allow(clippy::too_many_arguments)]
    fn rebuild_home(
        &self,
        pid: i32,
        (pre_from, final_out): (&mut Link, &mut Option<FinalLink>),
        (t_out, others_out): (&mut Option<Tracee>, &mut Vec<Tracee>),
        rs_out: &mut Option<image::Restore>,
        img_out: &mut Option<image::Image>,
        phase: &mut Phase,
        gang: Option<&om_runtime::gang::Member>,
    ) -> Result<(), Step> {
        let wire_step = |step: &'static str| {
            move |e: wire::WireError| match e {
                wire::WireError::Aborted(reason) => Step::GaveUp(step, reason),
                e => Step::Link(step, e),
            }
        };
        let home = |step: &'static str| move |e: om_runtime::ptrace::TraceError| Step::Home(step, e.to_string());
        // The pre-copy (laid out in the stopped placeholder while the guest
        // still runs and the deputy serves it), then the final image.
        let pre = match wire::recv_msg(pre_from).map_err(wire_step("pre-copy"))? {
            Msg::PreImage(pre) => pre,
            Msg::RestoreFailed { reason } => return Err(Step::GaveUp("pre-copy", reason)),
            m => return Err(Step::Link("pre-copy", wire::WireError::Unexpected(format!("{m:?}")))),
        };
        *phase = Phase::PrePages;
        *t_out = Some(Tracee::interrupt(pid, self.scratch).map_err(home("stopping the placeholder"))?);
        let t = t_out.as_mut().ok_or(Step::Home("stopping the placeholder", "no tracee".into()))?;
        let creds = om_runtime::procfs::exec_creds(pid);
        let next_fd = std::rc::Rc::new(std::cell::Cell::new(MAPPED_FD));
        let gang_fd = next_fd.clone();
        // A file the placeholder cannot open (execute-only): omd opens it,
        // if the process may execute it, and hands the fd in.
        let open_for = move |t: &mut Tracee, scratch: u64, path: &str| -> om_runtime::ptrace::Result<u64> {
            let denied = || om_runtime::ptrace::TraceError::Injected {
                pid: t.pid,
                name: "open mapped file (not executable by the process)",
                errno: libc::EACCES as i64,
            };
            let Some(c) = creds.as_ref() else { return Err(denied()) };
            if !sys::may_execute(path, c) {
                return Err(denied());
            }
            let f = std::fs::File::open(path).map_err(|e| om_runtime::ptrace::TraceError::Io {
                pid: t.pid,
                what: "open mapped file",
                source: e,
            })?;
            let at = next_fd.get();
            next_fd.set(at + 1);
            sys::install_fds(t, scratch, &[(at, true, f.into())])?;
            Ok(at as u64)
        };
        // Shared memory: the object the process's fds still hold here, if
        // any (so fd and mapping show the same bytes again; the layout
        // punches what the image lacks); for a gang, made once here and
        // handed to each placeholder.
        let object = |t: &mut Tracee, scratch: u64, r: &image::Region| -> om_runtime::ptrace::Result<Option<u64>> {
            let image::RegionKind::Shared { home, memfd, sysv: None, .. } = &r.kind else { return Ok(None) };
            let ioe =
                |e: std::io::Error| om_runtime::ptrace::TraceError::Io { pid: t.pid, what: "shared memory", source: e };
            let existing = || if *home == 0 { None } else { sys::held_object(*home, memfd.as_deref()) };
            let f = match gang {
                Some(m) => m.object_or(r, existing).map_err(ioe)?,
                None => existing(),
            };
            let Some(f) = f else { return Ok(None) };
            let at = gang_fd.get();
            gang_fd.set(at + 1);
            sys::install_fds(t, scratch & !(image::PAGE - 1), &[(at, true, f.into())])?;
            Ok(Some(at as u64))
        };
        let objects: Option<&image::ObjectSource<'_>> = Some(&object);
        *img_out = Some((*pre).clone());
        let rs = image::restore_layout(t, &pre, Target::Parked, self.scratch, Some(&open_for), objects)
            .map_err(home("laying out the pre-copy"))?;
        let (scratch, kept) = (rs.scratch, rs.kept.clone());
        *rs_out = Some(rs);
        transfer::recv_pages_keeping(pre_from, t, &pre, &kept).map_err(wire_step("pre-copy pages"))?;
        transfer::recv_rounds(pre_from, t, &pre, &kept).map_err(wire_step("pre-copy rounds"))?;
        // Laid out: the node may freeze the process and send the rest; the
        // control link's reader goes on meanwhile.
        wire::send(&mut &self.ctl_link, &Msg::PreOk).map_err(wire_step("pre-copy"))?;
        let _ = self.ctl_resume.send(());
        *phase = Phase::Awaiting;
        let ahead = self.await_going_home().map_err(Step::Ended)?;
        *phase = Phase::FinalHeader;
        let reader = self.link.try_clone().map_err(|e| Step::Link("image", e.into()))?;
        let link = final_out.insert(std::io::Read::chain(std::io::Cursor::new(ahead), reader));
        let img = match wire::recv_msg(link).map_err(wire_step("image"))? {
            Msg::Image(i) => *i,
            Msg::RestoreFailed { reason } => return Err(Step::GaveUp("image", reason)),
            m => return Err(Step::Link("image", wire::WireError::Unexpected(format!("{m:?}")))),
        };
        *phase = Phase::FinalPages;
        *img_out = Some(img.clone());
        let rs = rs_out.take().ok_or(Step::Home("image", "no layout".into()))?;
        let rs = image::restore_layout_again(t, &img, &pre, rs, Target::Parked, Some(&open_for), objects);
        let rs = rs.map_err(|e| {
            // The layout may be half changed; the scratch area is still this one.
            Step::Home("laying out the image", format!("{e} (scratch {scratch:#x})"))
        })?;
        *rs_out = Some(rs);
        let mut img = img;
        let dep = self.shared.pid.load(Ordering::SeqCst);
        let cwd = std::fs::read_link(format!("/proc/{dep}/cwd"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "/".into());
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{dep}/status")) {
            if let Some(u) = om_runtime::procfs::status_field_in(&s, "Umask") {
                img.umask = u32::from_str_radix(&u, 8).unwrap_or(img.umask);
            }
        }
        let kept = rs_out.as_ref().map(|rs| rs.kept.clone()).unwrap_or_default();
        transfer::recv_pages_keeping(link, t, &img, &kept).map_err(wire_step("image pages"))?;
        // Every frame of the move is read: nothing is left to drain.
        *phase = Phase::AllRead;
        let rs = rs_out.as_ref().ok_or(Step::Home("finishing", "no layout".into()))?;
        image::restore_finish(t, &img, Target::Parked, rs, Some(&cwd)).map_err(home("finishing the rebuild"))?;
        transfer::log_shared(pid, &img, "rebuilt");
        // Every other thread was parked here under its home tid.
        for th in &img.threads[1..] {
            if !self.threads.contains(&th.tid) {
                return Err(Step::Home("restoring threads", format!("thread {} is not parked here", th.tid)));
            }
            let mut o = Tracee::interrupt(th.tid, rs.scratch).map_err(home("stopping a parked thread"))?;
            let r = image::restore_thread(&mut o, th, rs.scratch + 1024);
            others_out.push(o);
            r.map_err(home("restoring a thread"))?;
        }
        let tids: Vec<i32> = img.threads.iter().map(|th| th.tid).collect();
        om_runtime::timers::restore(t, &img.timers, &tids, rs.scratch + 1024).map_err(home("restoring the timers"))?;
        let fds = sys::take_process_fds(dep, self.fds_res)
            .map_err(|e| Step::Home("taking the deputy's fds", e.to_string()))?;
        sys::install_fds(t, rs.scratch, &fds).map_err(home("installing the fds"))?;
        let mut all: Vec<Tracee> = std::iter::once(t_out.take().ok_or(Step::Home("signals", "no tracee".into()))?)
            .chain(others_out.drain(..))
            .collect();
        let queued = image::queue_pending(&mut all, &img, rs.scratch + 1024);
        let mut rest = all.split_off(1);
        *t_out = all.pop();
        others_out.append(&mut rest);
        queued.map_err(home("queueing its pending signals"))?;
        // Threads that ended away end here too.
        for &tid in self.threads.iter().filter(|t| img.threads.iter().all(|th| th.tid != **t)) {
            end_thread(tid, rs.scratch);
        }
        let t = t_out.as_mut().ok_or(Step::Home("signals", "no tracee".into()))?;
        // A gang's members commit once every one is rebuilt here (the
        // scratch area stays until then, for a repark).
        if let Some(m) = gang {
            m.gang.sync.shrink_to(img.gang_size as usize);
            m.gang.sync.arrive(1).map_err(|why| Step::Home("meeting its gang", why))?;
        }
        image::unmap_scratch(t, rs.scratch).map_err(home("removing the scratch area"))?;
        // Commit: from here the process is home.
        wire::send(&mut &self.link, &Msg::HomeOk).map_err(wire_step("commit"))?;
        let t = t_out.take().ok_or(Step::Home("commit", "no tracee".into()))?;
        if let Err(e) = t.detach() {
            tracing::error!(%e, pid, "cannot let the process run at home");
        }
        for o in others_out.drain(..) {
            let tid = o.pid;
            if let Err(e) = o.detach() {
                tracing::error!(%e, pid, tid, "cannot let a thread run at home");
            }
        }

        tracing::info!(pid, "process is running at home again");
        Ok(())
    }
}

/// Why relaying one image from the old node stopped.
enum Relayed {
    /// The old node gave up sending (RestoreFailed in the stream): it keeps
    /// the process (the new node was told).
    GaveUp(String),
    /// The old node's link failed.
    From(wire::WireError),
}

/// Relay one image (a pre-copy or the final image, with its pages) from the
/// old node to node `dest`. A failure towards `dest` is kept in `why`, and
/// the stream is still read to its end. The final image gets the home
/// identity of process `pid` (Some).
fn relay_stream<R: std::io::Read>(
    from: &mut R,
    to: &mut Link,
    dest: u32,
    why: &mut Option<String>,
    pid: Option<i32>,
) -> Result<(), Relayed> {
    let mut forward = |m: &wire::Frame, why: &mut Option<String>| {
        if why.is_none() {
            let r = match m {
                wire::Frame::Msg(m) => wire::send(&mut *to, m),
                wire::Frame::Data(d) => wire::send_data(&mut *to, d),
            };
            if let Err(e) = r {
                *why = Some(format!("to node {dest}: {e}"));
            }
        }
    };
    let gave_up = |reason: String, to: &mut Link| {
        // The new node learns why (a gang arriving there waits for one
        // less when the process ended).
        let _ = wire::send(to, &Msg::RestoreFailed { reason: reason.clone() });
        Relayed::GaveUp(reason)
    };
    let m = match (wire::recv_msg(from).map_err(Relayed::From)?, pid) {
        (Msg::Image(mut img), Some(pid)) => match om_runtime::procfs::stat(pid) {
            Ok(st) => {
                img.pid = pid;
                img.pgid = st.field(5) as i32;
                img.sid = st.field(6) as i32;
                Some(Msg::Image(img))
            }
            Err(e) => {
                why.get_or_insert(format!("reading the placeholder: {e}"));
                None
            }
        },
        (m @ Msg::PreImage(_), None) => Some(m),
        (Msg::RestoreFailed { reason }, _) => return Err(gave_up(reason, to)),
        (m, _) => return Err(Relayed::From(wire::WireError::Unexpected(format!("{m:?} instead of an image")))),
    };
    if let Some(m) = m {
        forward(&wire::Frame::Msg(m), why);
    }
    loop {
        match wire::recv(from).map_err(Relayed::From)? {
            f @ wire::Frame::Data(_) => forward(&f, why),
            wire::Frame::Msg(Msg::PagesDone) => {
                forward(&wire::Frame::Msg(Msg::PagesDone), why);
                return Ok(());
            }
            wire::Frame::Msg(Msg::RestoreFailed { reason }) => return Err(gave_up(reason, to)),
            wire::Frame::Msg(m) => {
                return Err(Relayed::From(wire::WireError::Unexpected(format!("{m:?} in the old node's page stream"))))
            }
        }
    }
}

/// Relay a pre-copy's further rounds, up to `PreDone`, as `relay_stream`.
fn relay_rounds<R: std::io::Read>(
    from: &mut R,
    to: &mut Link,
    dest: u32,
    why: &mut Option<String>,
) -> Result<(), Relayed> {
    loop {
        let f = wire::recv(from).map_err(Relayed::From)?;
        let done = matches!(f, wire::Frame::Msg(Msg::PreDone));
        match &f {
            wire::Frame::Data(_) | wire::Frame::Msg(Msg::PagesDone | Msg::PreDelta { .. } | Msg::PreDone) => {}
            wire::Frame::Msg(Msg::RestoreFailed { reason }) => {
                let _ = wire::send(&mut *to, &Msg::RestoreFailed { reason: reason.clone() });
                return Err(Relayed::GaveUp(reason.clone()));
            }
            wire::Frame::Msg(m) => {
                return Err(Relayed::From(wire::WireError::Unexpected(format!("{m:?} in the old node's pre-copy"))))
            }
        }
        if why.is_none() {
            let r = match &f {
                wire::Frame::Msg(m) => wire::send(&mut *to, m),
                wire::Frame::Data(d) => wire::send_data(&mut *to, d),
            };
            if let Err(e) = r {
                *why = Some(format!("to node {dest}: {e}"));
            }
        }
        if done {
            return Ok(());
        }
    }
}

/// How far a return home got: the pre-copy (on the control link), the wait
/// for the freeze, then the final image (on the call link).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    PreHeader,
    PrePages,
    Awaiting,
    FinalHeader,
    FinalPages,
    AllRead,
}

/// The call link after `GoingHome`, with the bytes the deputy read past it first.
type FinalLink = std::io::Chain<std::io::Cursor<Vec<u8>>, Link>;

/// Read the rest of a page stream (when `in_pages`) up to its end. True
/// when the node gave up sending it (RestoreFailed in its place).
fn drain_pages<R: std::io::Read>(from: &mut R, in_pages: bool) -> Result<bool, wire::WireError> {
    if !in_pages {
        return Ok(false);
    }
    loop {
        match wire::recv(from)? {
            wire::Frame::Data(_) => {}
            wire::Frame::Msg(Msg::PagesDone) => return Ok(false),
            wire::Frame::Msg(Msg::RestoreFailed { .. }) => return Ok(true),
            wire::Frame::Msg(m) => return Err(wire::WireError::Unexpected(format!("{m:?} in a page stream"))),
        }
    }
}

/// Read the rest of a pre-copy (when `in_it`: its first pages and rounds)
/// up to `PreDone`. True when the node gave up sending it.
fn drain_precopy<R: std::io::Read>(from: &mut R, in_it: bool) -> Result<bool, wire::WireError> {
    if !in_it {
        return Ok(false);
    }
    loop {
        match wire::recv(from)? {
            wire::Frame::Data(_) | wire::Frame::Msg(Msg::PagesDone | Msg::PreDelta { .. }) => {}
            wire::Frame::Msg(Msg::PreDone) => return Ok(false),
            wire::Frame::Msg(Msg::RestoreFailed { .. }) => return Ok(true),
            wire::Frame::Msg(m) => return Err(wire::WireError::Unexpected(format!("{m:?} in a pre-copy"))),
        }
    }
}

/// Read a final image and its pages to their end. True when the node gave
/// up sending it.
fn drain_image<R: std::io::Read>(from: &mut R) -> Result<bool, wire::WireError> {
    loop {
        match wire::recv(from)? {
            wire::Frame::Data(_) | wire::Frame::Msg(Msg::PreImage(_)) => {}
            wire::Frame::Msg(Msg::Image(_)) => return drain_pages(from, true),
            wire::Frame::Msg(Msg::RestoreFailed { .. }) => return Ok(true),
            wire::Frame::Msg(m) => return Err(wire::WireError::Unexpected(format!("{m:?} instead of an image"))),
        }
    }
}

/// End parked thread `tid` of a placeholder (its thread ended away): an
/// injected exit, through the scratch area at `scratch`.
fn end_thread(tid: i32, scratch: u64) {
    match Tracee::interrupt(tid, scratch) {
        Ok(mut t) => {
            let _ = t.syscall(libc::SYS_exit, [0, 0, 0, 0, 0, 0]);
        }
        Err(e) => tracing::warn!(%e, tid, "cannot end a parked thread"),
    }
}

/// Why a step of a return home failed.
enum Step {
    /// The link broke or carried something else: the process is lost (once
    /// the call link is in use).
    Link(&'static str, wire::WireError),
    /// The process ended, or its node was lost, before it froze (that event;
    /// None: no freeze came in time).
    Ended(Option<Event>),
    /// The node gave up sending (RestoreFailed in the stream); it keeps the process.
    GaveUp(&'static str, String),
    /// Home failed; the node must be told.
    Home(&'static str, String),
}

/// Why a process could not come home.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("node {node} could not send process {pid} home ({step}): {reason}; it keeps running there")]
    NodeGaveUp { pid: i32, node: u32, step: &'static str, reason: String },
    #[error("process {pid} could not be rebuilt at home ({step}): {reason}; it keeps running on node {node}")]
    Rebuild { pid: i32, node: u32, step: &'static str, reason: String },
    #[error("process {pid} ended on node {node} before it came home")]
    Ended { pid: i32, node: u32 },
    #[error("the link to node {node} failed while process {pid} came home ({step}): {reason}; the process is lost")]
    Link { pid: i32, node: u32, step: &'static str, reason: String },
}

/// Where the files omd opens for the placeholder are installed (from this
/// number up) while their regions are mapped: the placeholder holds no fds
/// then, and they are closed before its own fds return.
const MAPPED_FD: i32 = 900;

/// Reports from the remote's helper on a control link (job-control stops,
/// usage), and the start of a pre-copy there: the reader then waits until
/// told to go on (the returned sender), while the controller reads it.
fn read_control_link(ctl_link: &Link, pid: i32, tx: Sender<Event>, usage: Arc<Usage>) -> std::io::Result<Sender<()>> {
    let mut r = ctl_link.try_clone()?;
    let (go_on, resume) = channel::unbounded::<()>();
    std::thread::Builder::new().name(format!("ctl-{pid}")).spawn(move || {
        while let Ok(m) = wire::recv_msg(&mut r) {
            match m {
                Msg::Stopped { sig } if tx.send(Event::Stopped(sig)).is_err() => return,
                m @ Msg::Offer { .. } => {
                    let gone = tx.send(Event::PreCopy(m)).is_err() || resume.recv().is_err();
                    if gone {
                        return;
                    }
                }
                Msg::Usage { cpu_ns, run_ns, rss } => {
                    usage.cpu_ns.store(cpu_ns, Ordering::Relaxed);
                    usage.run_ns.store(run_ns, Ordering::Relaxed);
                    usage.rss.store(rss, Ordering::Relaxed);
                    usage.reports.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    })?;
    Ok(go_on)
}

/// What changes when a process runs a new program: its executable and the
/// bounds of its code and stack (/proc/PID/stat fields 26-28).
fn exec_id(pid: i32) -> Option<(std::path::PathBuf, String)> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let st = om_runtime::procfs::stat(pid).ok()?;
    let f = |n| st.field(n).to_string();
    Some((exe, format!("{} {} {}", f(26), f(27), f(28))))
}

/// An unguessable name for the control link of one migration.
fn random_token() -> u64 {
    let mut b = [0u8; 8];
    if rsys::getrandom(&mut b).is_err() {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
        return t ^ ((rsys::getpid() as u64) << 32);
    }
    u64::from_le_bytes(b)
}

/// End the placeholder the way the process ended away: same exit code, or
/// death by the same signal.
fn end_placeholder(pid: i32, threads: &[i32], scratch: u64, code: i32, signal: i32) {
    if signal == libc::SIGKILL || signal == 0 && code < 0 {
        let _ = rsys::kill(pid, libc::SIGKILL);
        return;
    }
    // The other parked threads are let go first: traced, each would have to
    // be reaped here before the leader's end could be (and the parent's
    // wait see it). They only wait in the parking loop.
    for &tid in threads {
        match Tracee::interrupt(tid, scratch) {
            Ok(t) => {
                let _ = t.detach();
            }
            Err(e) => tracing::warn!(%e, tid, "cannot let a parked thread go"),
        }
    }
    let Ok(mut t) = Tracee::interrupt(pid, scratch) else {
        let _ = rsys::kill(pid, libc::SIGKILL);
        return;
    };
    if signal == 0 {
        let _ = t.syscall(libc::SYS_exit_group, [code as u64, 0, 0, 0, 0, 0]);
        return;
    }
    // Default action for the signal, unblocked, then deliver it.
    let dfl = [0u8; 32];
    let at = scratch + 1024;
    let _ = t.poke(at, &dfl);
    let _ = t.syscall(libc::SYS_rt_sigaction, [signal as u64, at, 0, 8, 0, 0]);
    let _ = t.set_sigmask(0);
    let _ = rsys::kill(pid, signal);
    let Ok(running) = t.run_on() else { return };
    for _ in 0..1000 {
        match running.wait() {
            Stop::Signal { sig, .. } if sig == signal => running.resume(signal),
            Stop::Signal { .. } | Stop::Group(_) | Stop::Trap => running.resume(0),
            Stop::Ended(_) => return,
        }
    }
}
