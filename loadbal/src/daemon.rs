//! The node daemon: control socket (om-exec, omctl), node links (incoming
//! migrations), the table of processes under om, one controller thread per
//! migrated process, and the load balancer.

use crate::measure::{self, Counters, NodeDemand};
use crate::membership::{Health, LoadRecord, Membership, SharedView};
use crate::policy::{self, JobLoad, NodeLoad, Params, Pending, Pin};
use crossbeam::channel::{self, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use om_deputy::{Ctl, Gang, Plan, StateFn, Usage};

/// How long a node must have been down before a move to it is refused
/// without trying.
const DOWN_TRUSTED: Duration = Duration::from_secs(10);
use om_runtime::link::{ClusterKey, Link};
use om_runtime::procfs;
use om_runtime::wire::{self, Msg, NodeInfo, ProcInfo, WireError};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Settings of one node daemon.
#[derive(Debug, Clone)]
pub struct Config {
    pub node_id: u32,
    pub listen: SocketAddr,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    /// Nodes to announce this one to (any live member will do).
    pub seeds: Vec<SocketAddr>,
    pub key: ClusterKey,
    pub speed: f64,
    pub max_guests: u32,
    pub accept_guests: bool,
    /// Paths with the same contents on every node.
    pub consistent_paths: Vec<PathBuf>,
    /// Cgroups the processes this node runs are put in.
    pub cgroups: Vec<PathBuf>,
    /// Move processes automatically.
    pub balance: bool,
    /// Cores to count (None: all the machine has).
    pub cpus: Option<u32>,
    /// Share of memory to keep free.
    pub mem_low: f64,
}

/// A process under om on this node (its home).
struct Proc {
    cmd: String,
    state: String,
    where_: u32,
    /// The last node it ran on away (the `from` of its coming home).
    away_on: u32,
    locked: bool,
    ctl: Option<Sender<Ctl>>,
    started: Instant,
    /// When it last arrived where it is.
    last_move: Option<Instant>,
    /// The balancer is moving it.
    in_flight: bool,
    /// Why the balancer leaves it where it is.
    why: String,
    usage: Arc<Usage>,
    last: Option<Counters>,
    /// How many times rates were computed.
    rated: u32,
    /// Calls and bytes per CPU-second of the interval before the last.
    prev_io: (f64, f64),
    reports: u64,
    demand: f64,
    calls_per_cpu_s: f64,
    bytes_per_cpu_s: f64,
    rss: u64,
    /// The other members of the gang it moved out with (empty: alone).
    gang: Vec<i32>,
}

/// What /proc says of a process at home: its counters and resident memory.
fn home_reading(pid: i32) -> (Option<Counters>, Option<u64>) {
    (measure::home_counters(pid), procfs::rss(pid))
}

impl Proc {
    fn new(cmd: String, where_: u32, locked: bool) -> Proc {
        Proc {
            cmd,
            state: "home".into(),
            where_,
            away_on: where_,
            locked,
            ctl: None,
            started: Instant::now(),
            last_move: None,
            in_flight: false,
            why: String::new(),
            usage: Arc::default(),
            last: None,
            rated: 0,
            prev_io: (0.0, 0.0),
            reports: 0,
            demand: 1.0,
            calls_per_cpu_s: 0.0,
            bytes_per_cpu_s: 0.0,
            rss: 0,
            gang: Vec::new(),
        }
    }

    /// Read its counters (at home from /proc, away from the host's reports
    /// and the deputy) and update its rates.
    fn refresh(&mut self, pid: i32) {
        self.refresh_from(pid, None);
    }

    /// [`Proc::refresh`], with a reading at home already taken (see
    /// [`home_reading`]), so /proc is read without the table's lock.
    fn refresh_from(&mut self, pid: i32, reading: Option<(Option<Counters>, Option<u64>)>) {
        let now = match self.state.as_str() {
            "home" => {
                let (now, rss) = reading.unwrap_or_else(|| home_reading(pid));
                self.rss = rss.unwrap_or(self.rss);
                now
            }
            "away" => {
                let u = &self.usage;
                let reports = u.reports.load(Ordering::Relaxed);
                if reports == self.reports {
                    return;
                }
                self.reports = reports;
                self.rss = u.rss.load(Ordering::Relaxed);
                Some(Counters {
                    at: Instant::now(),
                    cpu_ns: u.cpu_ns.load(Ordering::Relaxed),
                    run_ns: u.run_ns.load(Ordering::Relaxed),
                    calls: u.calls.load(Ordering::Relaxed),
                    bytes: u.bytes.load(Ordering::Relaxed),
                    away: true,
                })
            }
            _ => None,
        };
        let Some(now) = now else { return };
        if let Some((d, c, b)) = self.last.as_ref().and_then(|old| measure::rates(old, &now)) {
            // Demand smoothed over two rounds; calls the higher of the last
            // two intervals (a program's start-up may compute before it
            // streams, or read many files before it computes for hours).
            // All its threads count: four busy threads are four cores of demand.
            self.demand = if self.rated > 0 { (self.demand + d) / 2.0 } else { d };
            self.calls_per_cpu_s = c.max(self.prev_io.0);
            self.bytes_per_cpu_s = b.max(self.prev_io.1);
            self.prev_io = (c, b);
            self.rated += 1;
        }
        self.last = Some(now);
    }
}

pub struct Node {
    cfg: Config,
    procs: Mutex<HashMap<i32, Proc>>,
    /// Processes pruned lately (when, and whether pinned): a fork event of
    /// one may still be queued (a subshell that forks and exits at once),
    /// and its child is under om all the same.
    ended: Mutex<HashMap<i32, (Instant, bool)>>,
    /// `omctl events` and the library's event streams.
    subscribers: Mutex<Vec<Sender<wire::ProcEvent>>>,
    view: SharedView,
    /// Takes guests now (omctl block/unblock/expel).
    accepts: AtomicBool,
    /// Relative speed now (omctl speed), f64 bits.
    speed: AtomicU64,
    /// Smoothed runnable demand of this node, f64 bits.
    demand: AtomicU64,
    /// This node's moves that the others' figures may not show yet.
    pending: Mutex<Pending>,
    /// Guests admitted lately (not yet in the measured demand).
    admitted: Mutex<Vec<Instant>>,
    /// Why each process at home cannot move, as last checked (the check
    /// reads every process's maps when it shares memory): for `omctl ps`
    /// and the balancer, at most every `CANT_MOVE_TTL`. A move checks anew.
    cant_move: Mutex<HashMap<i32, (Instant, Option<String>)>>,
    epoch: Instant,
    params: Params,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot listen on {addr}: {source} (is another omd using it? pick another --listen)")]
    Listen { addr: String, source: std::io::Error },
    #[error("another omd already answers on {0}; give this one its own --socket")]
    SocketBusy(String),
    #[error("cannot create {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("event loop: {0}")]
    Poll(#[from] std::io::Error),
}

const CONTROL: Token = Token(0);
const LINKS: Token = Token(1);
const GOSSIP: Token = Token(2);

/// Run the daemon until killed.
pub fn run(cfg: Config) -> Result<(), DaemonError> {
    om_runtime::sys::install_wakeup_handler(om_deputy::wake_signal())?;
    for d in [&cfg.state_dir, &cfg.socket.parent().map(PathBuf::from).unwrap_or_default()] {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir_all(d).map_err(|source| DaemonError::Dir { path: d.display().to_string(), source })?;
        }
    }
    if cfg.socket.exists() {
        if UnixStream::connect(&cfg.socket).is_ok() {
            return Err(DaemonError::SocketBusy(cfg.socket.display().to_string()));
        }
        let _ = std::fs::remove_file(&cfg.socket);
    }
    let control = UnixListener::bind(&cfg.socket)
        .map_err(|source| DaemonError::Listen { addr: cfg.socket.display().to_string(), source })?;
    // Everyone may ask; each request is checked against the caller's credentials.
    let _ = std::fs::set_permissions(&cfg.socket, std::os::unix::fs::PermissionsExt::from_mode(0o666));
    let links =
        TcpListener::bind(cfg.listen).map_err(|source| DaemonError::Listen { addr: cfg.listen.to_string(), source })?;
    control.set_nonblocking(true)?;
    links.set_nonblocking(true)?;
    let view = SharedView::default();
    let mut members = Membership::new(cfg.node_id, cfg.listen, cfg.seeds.clone(), cfg.key.clone(), view.clone())
        .map_err(|source| DaemonError::Listen { addr: format!("{} (udp)", cfg.listen), source })?;
    tracing::info!(node = cfg.node_id, listen = %cfg.listen, socket = %cfg.socket.display(), seeds = cfg.seeds.len(), "omd ready");

    let params = Params { mem_low: cfg.mem_low, ..Params::default() };
    let node = Arc::new(Node {
        accepts: AtomicBool::new(cfg.accept_guests),
        speed: AtomicU64::new(cfg.speed.to_bits()),
        demand: AtomicU64::new(0f64.to_bits()),
        pending: Mutex::new(Pending::default()),
        admitted: Mutex::new(Vec::new()),
        cant_move: Mutex::new(HashMap::new()),
        epoch: Instant::now(),
        params,
        cfg,
        procs: Mutex::new(HashMap::new()),
        ended: Mutex::new(HashMap::new()),
        subscribers: Mutex::new(Vec::new()),
        view,
    });
    {
        let n = node.clone();
        std::thread::Builder::new().name("measure".into()).spawn(move || {
            let mut d = NodeDemand::new(&n.cfg.cgroups);
            loop {
                n.demand.store(d.sample().to_bits(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(250));
            }
        })?;
    }
    {
        // With balancing off the processes' figures are still measured (for
        // `omctl ps` and `omctl mon`); nothing is decided.
        let n = node.clone();
        std::thread::Builder::new().name("balancer".into()).spawn(move || loop {
            // A little jitter, so nodes do not decide in step.
            let jitter =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos())
                    % 100;
            std::thread::sleep(Duration::from_millis(450 + u64::from(jitter)));
            if n.cfg.balance {
                n.balance_round();
            } else {
                n.measure_round();
            }
        })?;
    }
    match crate::sys::ProcEvents::open() {
        Ok(events) => {
            let n = node.clone();
            std::thread::Builder::new().name("proc-events".into()).spawn(move || n.track(events))?;
        }
        Err(e) => tracing::warn!(%e, "process events unavailable: children of processes under om will not be under om"),
    }
    let mut poll = Poll::new()?;
    poll.registry().register(&mut SourceFd(&control.as_raw_fd()), CONTROL, Interest::READABLE)?;
    poll.registry().register(&mut SourceFd(&links.as_raw_fd()), LINKS, Interest::READABLE)?;
    poll.registry().register(&mut SourceFd(&members.socket().as_raw_fd()), GOSSIP, Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut published = std::time::Instant::now() - Duration::from_secs(10);
    let mut health: HashMap<u32, Health> = HashMap::new();
    loop {
        if published.elapsed() >= Duration::from_secs(1) {
            members.publish(node.own_record());
            published = std::time::Instant::now();
        }
        let wait = members.tick().min(Duration::from_secs(1)).max(Duration::from_millis(1));
        if let Err(e) = poll.poll(&mut events, Some(wait)) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        for ev in events.iter() {
            match ev.token() {
                CONTROL => {
                    while let Ok((s, _)) = control.accept() {
                        let n = node.clone();
                        let _ = std::thread::Builder::new().name("control".into()).spawn(move || n.serve_control(s));
                    }
                }
                LINKS => {
                    while let Ok((s, peer)) = links.accept() {
                        let n = node.clone();
                        let _ = std::thread::Builder::new().name("link".into()).spawn(move || n.serve_link(s, peer));
                    }
                }
                GOSSIP => members.readable(),
                _ => {}
            }
        }
        members.tick();
        node.watch_health(&mut health);
        node.prune();
    }
}

/// The command line of a process as a person reads it: program name and
/// arguments ([`om_runtime::client::display_command`]).
fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let s: Vec<String> =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!s.is_empty()).then(|| om_runtime::client::display_command(&s))
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials).ok().map(|c| c.uid())
}

fn owner_uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

impl Node {
    /// Tell every subscriber (`omctl events`) what happened to a process.
    fn emit(&self, e: wire::ProcEvent) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        // A subscriber that has gone is dropped; one that lags loses events.
        subs.retain(|s| !matches!(s.try_send(e.clone()), Err(channel::TrySendError::Disconnected(_))));
    }

    fn event(pid: i32, kind: &str) -> wire::ProcEvent {
        wire::ProcEvent { pid, kind: kind.into(), from: 0, to: 0, reason: String::new(), code: 0, signal: 0 }
    }

    fn state_fn(self: &Arc<Self>) -> StateFn {
        let n = Arc::downgrade(self);
        Arc::new(move |pid, state, where_| {
            if let Some(n) = n.upgrade() {
                let mut procs = n.procs.lock().unwrap_or_else(|p| p.into_inner());
                if state == "exited" {
                    if let Some(p) = procs.remove(&pid) {
                        // Its exit (with its status) comes from the kernel's
                        // process events, which may be read after this.
                        n.ended.lock().unwrap_or_else(|p| p.into_inner()).insert(pid, (Instant::now(), p.locked));
                    }
                } else if let Some(p) = procs.get_mut(&pid) {
                    if state == "away" && p.where_ != where_ {
                        n.emit(wire::ProcEvent { from: p.where_, to: where_, ..Node::event(pid, "moved") });
                    }
                    // Back from a node (not a move out that failed).
                    if state == "home" && p.away_on != where_ {
                        n.emit(wire::ProcEvent { from: p.away_on, to: where_, ..Node::event(pid, "home") });
                    }
                    if state == "away" || state == "home" {
                        p.away_on = where_;
                    }
                    if p.where_ != where_ {
                        p.last_move = Some(Instant::now());
                        p.last = None;
                    }
                    p.state = state.to_string();
                    p.where_ = where_;
                    if state == "home" {
                        p.ctl = None;
                        p.gang.clear();
                    }
                }
            }
        })
    }

    /// Adopt every process forked by a process under om (children,
    /// grandchildren, double-forked daemons: the fork is seen before any
    /// reparenting).
    fn track(self: Arc<Self>, events: crate::sys::ProcEvents) {
        loop {
            match events.next() {
                Ok(evs) => {
                    let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                    let ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
                    for ev in evs {
                        if let crate::sys::ProcEvent::Exit { pid, status } = ev {
                            if procs.contains_key(&pid) || ended.contains_key(&pid) {
                                let (code, signal) =
                                    if status & 0x7f == 0 { ((status >> 8) & 0xff, 0) } else { (0, status & 0x7f) };
                                self.emit(wire::ProcEvent { code, signal, ..Node::event(pid, "exited") });
                            }
                            continue;
                        }
                        if let crate::sys::ProcEvent::Fork { parent, child } = ev {
                            let parent_locked =
                                procs.get(&parent).map(|p| p.locked).or_else(|| ended.get(&parent).map(|e| e.1));
                            if let (Some(locked), false) = (parent_locked, procs.contains_key(&child)) {
                                // A pinned process's children are pinned too
                                // (om-exec --lock make pins the whole build).
                                let cmd = cmdline(child).unwrap_or_default();
                                procs.insert(child, Proc::new(cmd, self.cfg.node_id, locked));
                            }
                        }
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    tracing::warn!("process events overflowed; some forks may have been missed");
                }
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    tracing::error!(%e, "process events failed; new children are no longer adopted");
                    return;
                }
            }
        }
    }

    /// Forget processes that ended while at home.
    fn prune(&self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        procs.retain(|pid, p| {
            let alive =
                p.state != "home" || procfs::stat(*pid).map(|s| s.state() != 'Z' && s.state() != 'X').unwrap_or(false);
            if !alive {
                ended.insert(*pid, (now, p.locked));
            }
            alive
        });
        ended.retain(|_, e| now.duration_since(e.0) < Duration::from_secs(5));
    }

    fn serve_control(self: Arc<Self>, mut s: UnixStream) {
        let uid = peer_uid(&s);
        loop {
            let msg = match wire::recv_msg(&mut s) {
                Ok(m) => m,
                Err(WireError::Closed) => return,
                Err(e) => {
                    tracing::warn!(%e, "malformed control request; closing that connection");
                    let _ = wire::send(&mut s, &Msg::Error { message: format!("malformed request: {e}") });
                    return;
                }
            };
            if matches!(msg, Msg::Events) {
                return self.stream_events(s);
            }
            let reply = self.control(msg, uid);
            if wire::send(&mut s, &reply).is_err() {
                return;
            }
        }
    }

    /// A subscriber: every event from now on, until it hangs up.
    fn stream_events(self: Arc<Self>, mut s: UnixStream) {
        let (tx, rx) = channel::bounded(4096);
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(tx);
        if wire::send(&mut s, &Msg::Ok).is_err() {
            return;
        }
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(e) => {
                    if wire::send(&mut s, &Msg::Event(e)).is_err() {
                        return;
                    }
                }
                Err(channel::RecvTimeoutError::Timeout) => {
                    // Gone quiet: has the subscriber hung up?
                    let mut b = [0u8; 1];
                    let _ = s.set_nonblocking(true);
                    let gone = matches!(std::io::Read::read(&mut s, &mut b), Ok(0));
                    let _ = s.set_nonblocking(false);
                    if gone {
                        return;
                    }
                }
                Err(channel::RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    fn allowed(&self, uid: Option<u32>, pid: i32) -> bool {
        matches!(uid, Some(0)) || (uid.is_some() && uid == owner_uid(pid))
    }

    fn control(self: &Arc<Self>, msg: Msg, uid: Option<u32>) -> Msg {
        let err = |m: String| Msg::Error { message: m };
        match msg {
            Msg::Register { pid, cmd, lock, node } => {
                if procfs::stat(pid).is_err() {
                    return err(format!("no process {pid}"));
                }
                if !self.allowed(uid, pid) {
                    return err(format!("permission denied: process {pid} belongs to another user"));
                }
                let node = node.filter(|&n| n != self.cfg.node_id);
                if let Some(n) = node {
                    if let Err(e) = self.node_addr(n) {
                        return err(e);
                    }
                }
                self.procs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(pid, Proc::new(cmd, self.cfg.node_id, lock && node.is_none()));
                if let Err(e) = procfs::join_cgroups(pid, &self.cfg.cgroups) {
                    tracing::warn!(pid, %e, "cannot put the process in this node's cgroup");
                }
                tracing::info!(pid, lock, ?node, "registered");
                if let Some(n) = node {
                    let me = self.clone();
                    let _ = std::thread::Builder::new()
                        .name(format!("start-{pid}"))
                        .spawn(move || me.start_on(pid, n, uid, lock));
                }
                Msg::Ok
            }
            Msg::Lock { pid, on } => {
                if !self.allowed(uid, pid) {
                    return err(format!("permission denied: process {pid} belongs to another user"));
                }
                let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                match procs.get_mut(&pid) {
                    Some(p) => {
                        p.locked = on;
                        tracing::info!(pid, on, "lock");
                        Msg::Ok
                    }
                    None => err(format!(
                        "process {pid} is not under om on node {}; omctl ps lists those that are",
                        self.cfg.node_id
                    )),
                }
            }
            Msg::Block { on } => {
                if uid != Some(0) {
                    return err("permission denied: only root may block or unblock a node".into());
                }
                self.accepts.store(!on, Ordering::SeqCst);
                tracing::info!(blocked = on, "guests {}", if on { "blocked" } else { "welcome" });
                Msg::Ok
            }
            Msg::Expel => {
                if uid != Some(0) {
                    return err("permission denied: only root may expel guests".into());
                }
                self.accepts.store(false, Ordering::SeqCst);
                let n = om_remote::expel();
                tracing::info!(guests = n, "expelling every guest; the node takes no more (omctl unblock)");
                Msg::Ok
            }
            Msg::Speed { speed } => {
                if uid != Some(0) {
                    return err("permission denied: only root may set the node's speed".into());
                }
                if !(speed.is_finite() && speed > 0.0 && speed <= 1000.0) {
                    return err(format!("speed {speed} is not a positive number (1 = a typical node)"));
                }
                self.speed.store(speed.to_bits(), Ordering::SeqCst);
                tracing::info!(speed, "speed set");
                Msg::Ok
            }
            Msg::Ps => {
                self.prune();
                let gangs: HashMap<i32, Vec<i32>> = self.gangs_at_home();
                let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                let mut v: Vec<ProcInfo> = procs
                    .iter()
                    .map(|(pid, p)| ProcInfo {
                        pid: *pid,
                        home: self.cfg.node_id,
                        where_: p.where_,
                        state: p.state.clone(),
                        cmd: if p.state == "home" {
                            cmdline(*pid).unwrap_or_else(|| p.cmd.clone())
                        } else {
                            p.cmd.clone()
                        },
                        cant_move: if p.locked {
                            "locked".into()
                        } else if p.state == "home" {
                            let gang = gangs.get(pid).cloned().unwrap_or_else(|| vec![*pid]);
                            self.cant_move_of(*pid, &gang).unwrap_or_default()
                        } else {
                            String::new()
                        },
                        why: if p.locked {
                            "locked".into()
                        } else if p.in_flight || (p.state != "home" && p.state != "away") {
                            "moving".into()
                        } else if !self.cfg.balance {
                            "balancing is off on this node".into()
                        } else {
                            p.why.clone()
                        },
                        demand: p.demand,
                        rss: p.rss,
                        locked: p.locked,
                        gang: match gangs.get(pid) {
                            Some(g) => g.iter().copied().filter(|g| g != pid).collect(),
                            None => p.gang.clone(),
                        },
                    })
                    .collect();
                v.sort_by_key(|p| p.pid);
                Msg::PsReply(v)
            }
            Msg::Nodes => Msg::NodesReply(self.nodes()),
            Msg::Migrate { pid, to } => match self.migrate(pid, to, uid, -1.0) {
                Ok(()) => Msg::Ok,
                Err(e) => err(e),
            },
            m => err(format!("unexpected request {m:?}")),
        }
    }

    /// Every node this one knows, itself first, as the membership sees them.
    fn nodes(&self) -> Vec<NodeInfo> {
        let me = self.cfg.node_id;
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<u32> = view.nodes.keys().copied().filter(|&i| i != me).collect();
        ids.sort_unstable();
        let mut v = vec![self.own_info()];
        for id in ids {
            let s = &view.nodes[&id];
            let (rec, age) = match &s.load {
                Some(k) => (Some(&k.rec), k.got.elapsed().as_millis() as u64),
                None => (None, s.since.elapsed().as_millis() as u64),
            };
            v.push(node_info(id, s.addr.to_string(), s.health.as_str(), rec, age));
        }
        v
    }

    /// This node's figures, as it spreads them.
    pub fn own_record(&self) -> LoadRecord {
        let cpus = self.cfg.cpus.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let (mem_total, mem_free) = measure::memory(&self.cfg.cgroups);
        LoadRecord {
            id: self.cfg.node_id,
            stamp: 0,
            load: f64::from_bits(self.demand.load(Ordering::Relaxed)) / f64::from(cpus.max(1)),
            cpus,
            speed: f64::from_bits(self.speed.load(Ordering::Relaxed)),
            mem_total,
            mem_free,
            guests: om_remote::guests(),
            max_guests: self.cfg.max_guests,
            accepts: self.accepts.load(Ordering::Relaxed),
        }
    }

    /// This node as the balancer sees it, now.
    fn own_load(&self) -> NodeLoad {
        load_of(&self.own_record())
    }

    /// Move a process just registered to node `n` once it has started the
    /// program (om-exec --node).
    fn start_on(self: Arc<Self>, pid: i32, n: u32, uid: Option<u32>, lock: bool) {
        let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let before = exe(pid);
        let t = Instant::now();
        // Still om-exec (it registers, then execs the program): wait for the exec.
        // On a loaded node the exec may already have happened.
        let registering = before.as_ref().is_some_and(|p| p.file_name().is_some_and(|f| f == "om-exec"));
        while registering && exe(pid) == before && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(2));
        }
        // Scripts run several programs in a row (env, then the interpreter):
        // wait until one stays for a moment, and try again if one more comes.
        let mut r = Err(String::new());
        for _ in 0..10 {
            let mut now = exe(pid);
            let mut stable = Instant::now();
            while stable.elapsed() < Duration::from_millis(50) && t.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(5));
                let e = exe(pid);
                if e != now {
                    now = e;
                    stable = Instant::now();
                }
            }
            r = self.migrate(pid, Some(n), uid, -1.0);
            if !r.as_ref().is_err_and(|e| e.contains("new program")) {
                break;
            }
        }
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = procs.get_mut(&pid) {
            p.locked = lock;
            if let Err(e) = &r {
                tracing::warn!(pid, node = n, e, "could not start the process on node {n}; it runs at home");
                p.why = format!("could not start on node {n}: {e}");
            }
        }
    }

    /// One round of the balancer: measure this node's processes, take the
    /// others' figures from membership, decide, and start the moves.
    /// Refresh every process's figures (demand, calls, memory) without deciding.
    /// /proc is read without the table's lock: the process-event thread
    /// must take it at once to put a new child under om before its parent
    /// can exit.
    fn measure_round(self: &Arc<Self>) {
        let pids: Vec<(i32, bool)> = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs
                .iter()
                .filter(|(_, p)| p.state == "home" || p.state == "away")
                .map(|(&pid, p)| (pid, p.state == "home"))
                .collect()
        };
        for (pid, home) in pids {
            let reading = home.then(|| home_reading(pid));
            if let Some(p) = self.procs.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&pid) {
                p.refresh_from(pid, reading);
            }
        }
    }

    fn balance_round(self: &Arc<Self>) {
        let me = self.cfg.node_id;
        let gangs = self.gangs_at_home();
        let jobs: Vec<JobLoad> = {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs
                .iter_mut()
                .filter(|(_, p)| p.state == "home" || p.state == "away" || p.in_flight)
                .map(|(&pid, p)| {
                    p.refresh(pid);
                    let pin = if p.locked {
                        Some(Pin::Locked)
                    } else if p.state == "home" {
                        let gang = gangs.get(&pid).cloned().unwrap_or_else(|| vec![pid]);
                        self.cant_move_of(pid, &gang).map(Pin::CantMove)
                    } else {
                        None
                    };
                    JobLoad {
                        pid,
                        at: p.where_,
                        demand: p.demand,
                        age: p.started.elapsed().as_secs_f64(),
                        rss: p.rss,
                        calls_per_cpu_s: p.calls_per_cpu_s,
                        bytes_per_cpu_s: p.bytes_per_cpu_s,
                        pin,
                        since_move: p.last_move.map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64()),
                        in_flight: p.in_flight || (p.state != "home" && p.state != "away"),
                        measured: p.rated >= 2,
                    }
                })
                .collect()
        };
        // A gang is one job: its lowest pid stands for it, with the sum of
        // the members' demand and memory (a move of it moves them all).
        let (jobs, followers) = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            let gang_of = |pid: i32| -> Vec<i32> {
                match gangs.get(&pid) {
                    Some(g) => g.clone(),
                    None => {
                        let mut g: Vec<i32> = procs.get(&pid).map(|p| p.gang.clone()).unwrap_or_default();
                        g.push(pid);
                        g.sort_unstable();
                        g
                    }
                }
            };
            merge_gangs(jobs, gang_of)
        };
        if !followers.is_empty() {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            for (pid, leader) in &followers {
                if let Some(p) = procs.get_mut(pid) {
                    p.why = format!("it moves with its gang, as process {leader} does");
                }
            }
        }
        if jobs.is_empty() {
            return;
        }
        let now = self.epoch.elapsed().as_secs_f64();
        let mut nodes = vec![self.own_load()];
        let mut made: Vec<(u32, f64)> = vec![(me, now)];
        {
            let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            for (&id, seen) in view.nodes.iter() {
                let Some(k) = &seen.load else { continue };
                if id == me || seen.health != Health::Alive || k.got.elapsed() > Duration::from_secs(5) {
                    continue;
                }
                nodes.push(load_of(&k.rec));
                made.push((id, now - k.got.elapsed().as_secs_f64()));
            }
        }
        nodes.sort_by_key(|n| n.id);
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .correct(&mut nodes, now, 4.0, |id| made.iter().find(|(i, _)| *i == id).map_or(f64::INFINITY, |(_, m)| *m));
        let d = policy::decide(me, &nodes, &jobs, &self.params);
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for (pid, why) in &d.stays {
            if let Some(p) = procs.get_mut(pid) {
                p.why = why.to_string();
            }
        }
        for m in d.moves {
            let Some(p) = procs.get_mut(&m.pid) else { continue };
            p.in_flight = true;
            p.why = "moving".into();
            // A gang's job carries the demand and memory of all its members.
            let (demand, rss) = jobs.iter().find(|j| j.pid == m.pid).map_or((p.demand, p.rss), |j| (j.demand, j.rss));
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).add(m.pid, now, m.from, m.to, demand, rss);
            tracing::info!(
                pid = m.pid,
                from = m.from,
                to = m.to,
                usher = m.usher,
                benefit = format!("{:.2}", m.benefit),
                "balancer moves the process"
            );
            let node = self.clone();
            let _ = std::thread::Builder::new().name(format!("move-{}", m.pid)).spawn(move || {
                let to = (m.to != node.cfg.node_id).then_some(m.to);
                let r = node.migrate(m.pid, to, Some(0), m.assumed);
                {
                    let mut pending = node.pending.lock().unwrap_or_else(|p| p.into_inner());
                    match r {
                        Ok(()) => pending.landed(m.pid, node.epoch.elapsed().as_secs_f64()),
                        Err(_) => pending.cancel(m.pid),
                    }
                }
                let mut procs = node.procs.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(p) = procs.get_mut(&m.pid) {
                    p.in_flight = false;
                    if let Err(e) = r {
                        tracing::info!(pid = m.pid, to = m.to, e, "balancer move did not happen");
                        p.why = format!("move to node {} failed: {e}", m.to);
                        // Wait as after a move before trying again.
                        p.last_move = Some(Instant::now());
                    }
                }
            });
        }
    }

    fn own_info(&self) -> NodeInfo {
        node_info(self.cfg.node_id, self.cfg.listen.to_string(), "alive", Some(&self.own_record()), 0)
    }

    /// Where node `n` listens, if it is a live member (or one declared down
    /// only moments ago).
    fn node_addr(&self, n: u32) -> Result<SocketAddr, String> {
        let me = self.cfg.node_id;
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        match view.nodes.get(&n) {
            // Gossip runs late on a loaded node: a node only just declared
            // down is tried anyway (the link's connect decides, within 3 s).
            Some(s) if s.health == Health::Down && s.since.elapsed() >= DOWN_TRUSTED => Err(format!(
                "node {n} is down (for {} s); pick another node (omctl nodes)",
                s.since.elapsed().as_secs()
            )),
            Some(s) => Ok(s.addr),
            None => {
                let mut known: Vec<u32> = view.nodes.keys().copied().filter(|&i| i != me).collect();
                known.sort_unstable();
                let known: Vec<String> = known.iter().map(u32::to_string).collect();
                Err(format!(
                    "unknown node {n}; known nodes: {me} (this one){}{}",
                    if known.is_empty() { "" } else { ", " },
                    known.join(", ")
                ))
            }
        }
    }

    /// Tell the controllers of processes on a node that just went down.
    fn watch_health(&self, last: &mut HashMap<u32, Health>) {
        let now: HashMap<u32, Health> = {
            let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            view.nodes.iter().map(|(k, s)| (*k, s.health)).collect()
        };
        for (&id, &h) in &now {
            if h == Health::Down && last.get(&id).is_some_and(|&o| o != Health::Down) {
                let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                for p in procs.values().filter(|p| p.where_ == id) {
                    if let Some(c) = &p.ctl {
                        let _ = c.send(Ctl::NodeDown(id));
                    }
                }
            }
        }
        *last = now;
    }

    /// Move `pid` to node `to` (None: home). `assumed` is the load the
    /// balancer believed `to` had (negative for a manual move: no check).
    /// Why `pid` (of `gang`) cannot move, checked at most every
    /// `CANT_MOVE_TTL` (see `cant_move`).
    fn cant_move_of(&self, pid: i32, gang: &[i32]) -> Option<String> {
        let mut cache = self.cant_move.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, why)) = cache.get(&pid) {
            if at.elapsed() < CANT_MOVE_TTL {
                return why.clone();
            }
        }
        let why = om_runtime::image::cant_move(pid, gang);
        cache.retain(|_, (at, _)| at.elapsed() < CANT_MOVE_TTL);
        cache.insert(pid, (Instant::now(), why.clone()));
        why
    }

    /// The gangs of the processes under om at home that map shared memory
    /// ([`om_runtime::gang::of`]), by member: every member's gang, sorted.
    fn gangs_at_home(&self) -> HashMap<i32, Vec<i32>> {
        let home: std::collections::HashSet<i32> = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            procs.iter().filter(|(_, p)| p.state == "home" && !p.locked).map(|(&k, _)| k).collect()
        };
        let mut out: HashMap<i32, Vec<i32>> = HashMap::new();
        for &pid in &home {
            if out.contains_key(&pid) || om_runtime::gang::objects(pid).is_empty() {
                continue;
            }
            let g = om_runtime::gang::of(pid, &|n| home.contains(&n));
            for &m in &g {
                out.insert(m, g.clone());
            }
        }
        out
    }

    fn migrate(self: &Arc<Self>, pid: i32, to: Option<u32>, uid: Option<u32>, assumed: f64) -> Result<(), String> {
        let r = self.try_migrate(pid, to, uid, assumed);
        if let Err(reason) = &r {
            let under_om = self.procs.lock().unwrap_or_else(|p| p.into_inner()).contains_key(&pid);
            if under_om {
                let to = to.unwrap_or(self.cfg.node_id);
                self.emit(wire::ProcEvent { to, reason: reason.clone(), ..Node::event(pid, "refused") });
            }
        }
        r
    }

    fn try_migrate(self: &Arc<Self>, pid: i32, to: Option<u32>, uid: Option<u32>, assumed: f64) -> Result<(), String> {
        let me = self.cfg.node_id;
        let to = to.filter(|&n| n != me);
        let (state, where_, ctl, locked, gang) = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            match procs.get(&pid) {
                Some(p) => (p.state.clone(), p.where_, p.ctl.clone(), p.locked, p.gang.clone()),
                None if procfs::stat(pid).is_ok() => {
                    return Err(format!("process {pid} is not under om on node {me}; start it with om-exec"));
                }
                None => return Err(format!("no process {pid} on node {me}")),
            }
        };
        if !self.allowed(uid, pid) {
            return Err(format!("permission denied: process {pid} belongs to another user"));
        }
        if locked {
            return Err(format!("process {pid} is locked to where it is (omctl unlock {pid})"));
        }
        let addr = match to {
            Some(n) => Some(self.node_addr(n)?),
            None => None,
        };
        match (state.as_str(), to) {
            ("home", None) => Ok(()),
            ("away", Some(n)) if n == where_ => Ok(()),
            ("away", Some(n)) if !gang.is_empty() => {
                // The whole gang moves on: each member's controller relays
                // it, and its members meet there as they left.
                let addr = addr.ok_or("no address")?;
                let mut waits = Vec::new();
                let members: Vec<(i32, Option<Sender<Ctl>>)> = {
                    let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                    std::iter::once(pid)
                        .chain(gang.iter().copied())
                        .filter_map(|m| procs.get(&m).map(|p| (m, p.ctl.clone())))
                        .collect()
                };
                for (m, c) in members {
                    let c = c.ok_or(format!("process {m} of the gang is between nodes; try again"))?;
                    let (tx, rx) = channel::bounded(1);
                    c.send(Ctl::MoveTo { dest: n, addr, assumed, reply: tx })
                        .map_err(|_| format!("process {m}'s controller is gone"))?;
                    waits.push((m, rx));
                }
                let mut first_err = None;
                for (m, rx) in waits {
                    let r = rx.recv_timeout(Duration::from_secs(120)).map_err(|e| match e {
                        channel::RecvTimeoutError::Timeout => format!("process {m}'s move did not finish in 120 s"),
                        channel::RecvTimeoutError::Disconnected => format!("process {m} ended before it could move"),
                    });
                    match r.and_then(|r| r) {
                        // A member that ended on the way is not a failure of the gang's move.
                        Err(e) if !ended_on_the_way(&e) => {
                            first_err.get_or_insert(e);
                        }
                        _ => {}
                    }
                }
                first_err.map_or(Ok(()), Err)
            }
            ("away", Some(n)) => {
                // Straight from the node it is on to node n.
                let ctl = ctl.ok_or("the process is between nodes; try again")?;
                let addr = addr.ok_or("no address")?;
                let (tx, rx) = channel::bounded(1);
                ctl.send(Ctl::MoveTo { dest: n, addr, assumed, reply: tx })
                    .map_err(|_| "the process's controller is gone".to_string())?;
                rx.recv_timeout(Duration::from_secs(120)).map_err(|e| match e {
                    channel::RecvTimeoutError::Timeout => "the move did not finish in 120 s".to_string(),
                    channel::RecvTimeoutError::Disconnected => format!("process {pid} ended before it could move"),
                })?
            }
            ("away", None) => {
                let ctl = ctl.ok_or("the process is between nodes; try again")?;
                let (tx, rx) = channel::bounded(1);
                ctl.send(Ctl::ComeHome(tx)).map_err(|_| "the process's controller is gone".to_string())?;
                rx.recv_timeout(Duration::from_secs(60)).map_err(|e| match e {
                    channel::RecvTimeoutError::Timeout => "the process did not come home in 60 s".to_string(),
                    // Its controller ended without an answer: so did the process.
                    channel::RecvTimeoutError::Disconnected => format!("process {pid} ended before it came home"),
                })??;
                match (to, addr) {
                    (Some(n), Some(a)) => self.migrate_out(pid, n, a, assumed),
                    _ => Ok(()),
                }
            }
            ("home", Some(n)) => {
                let addr = addr.ok_or("no address")?;
                let gang = om_runtime::gang::of(pid, &|q| {
                    let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                    procs.get(&q).is_some_and(|p| p.state == "home" && !p.locked)
                });
                if gang.len() > 1 {
                    self.migrate_gang_out(gang, n, addr, assumed)
                } else {
                    self.migrate_out(pid, n, addr, assumed)
                }
            }
            (s, _) => Err(format!("process {pid} is {s}; try again in a moment")),
        }
    }

    fn migrate_out(self: &Arc<Self>, pid: i32, dest: u32, addr: SocketAddr, assumed: f64) -> Result<(), String> {
        let rx = self.start_out(pid, dest, addr, assumed, Gang::alone(pid))?;
        rx.recv().map_err(|_| "the migration thread died".to_string())?
    }

    /// Move the processes of `gang` out together (each on a controller of
    /// its own, meeting at the freeze and at the destination): all move,
    /// or none does.
    fn migrate_gang_out(
        self: &Arc<Self>,
        gang: Vec<i32>,
        dest: u32,
        addr: SocketAddr,
        assumed: f64,
    ) -> Result<(), String> {
        tracing::info!(?gang, dest, "moving a gang");
        let g = Gang::of(gang.clone());
        let mut waits = Vec::new();
        for &m in &gang {
            match self.start_out(m, dest, addr, assumed, g.clone()) {
                Ok(rx) => waits.push(rx),
                Err(e) => {
                    g.sync.fail(&e);
                    return Err(e);
                }
            }
        }
        let mut first_err = None;
        for rx in waits {
            match rx.recv().map_err(|_| "the migration thread died".to_string()).and_then(|r| r) {
                Err(e) if !ended_on_the_way(&e) => {
                    first_err.get_or_insert(e);
                }
                _ => {}
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for &m in &gang {
            if let Some(p) = procs.get_mut(&m) {
                p.gang = gang.iter().copied().filter(|&q| q != m).collect();
            }
        }
        Ok(())
    }

    /// Start the controller that moves `pid` out; its answer comes on the receiver.
    fn start_out(
        self: &Arc<Self>,
        pid: i32,
        dest: u32,
        addr: SocketAddr,
        assumed: f64,
        gang: Arc<Gang>,
    ) -> Result<channel::Receiver<Result<(), String>>, String> {
        let (reply_tx, reply_rx) = channel::bounded(1);
        let (ctl_tx, ctl_rx) = channel::unbounded();
        let usage = {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            match procs.get_mut(&pid) {
                Some(p) => {
                    p.state = "migrating".into();
                    p.ctl = Some(ctl_tx);
                    p.usage.clone()
                }
                None => Arc::default(),
            }
        };
        let plan = Plan { pid, home: self.cfg.node_id, dest, addr, key: self.cfg.key.clone(), assumed, usage, gang };
        let state = self.state_fn();
        std::thread::Builder::new()
            .name(format!("home-{pid}"))
            .spawn(move || om_deputy::migrate_and_control(plan, reply_tx, ctl_rx, state))
            .map_err(|e| format!("cannot start a controller: {e}"))?;
        Ok(reply_rx)
    }

    fn serve_link(self: Arc<Self>, s: TcpStream, peer: SocketAddr) {
        let mut s = match Link::accept(s, &self.cfg.key, self.cfg.node_id) {
            Ok(l) => l,
            Err(e) => {
                // Logged once per address: a scanner or a misconfigured node
                // keeps trying.
                if refused_first(peer.ip()) {
                    tracing::warn!(%peer, %e, "node link refused");
                }
                return;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
        let node = match wire::recv_msg(&mut s) {
            Ok(Msg::Hello { node }) if node == s.peer_node() => node,
            Ok(m) => {
                tracing::warn!(%peer, ?m, "link did not start with a matching Hello; closing it");
                return;
            }
            Err(e) => {
                tracing::warn!(%peer, %e, "malformed frame on a node link; closing it");
                return;
            }
        };
        match wire::recv_msg(&mut s) {
            Ok(Msg::Attach { token }) => {
                let _ = s.set_read_timeout(None);
                if !om_remote::attach(token, s) {
                    tracing::warn!(%peer, node, "control link for no migration in progress; closed");
                }
            }
            Ok(offer @ Msg::Offer { .. }) => {
                let _ = s.set_read_timeout(None);
                if let Msg::Offer { assumed, .. } = &offer {
                    if let Err(reason) = self.admit(*assumed) {
                        tracing::info!(%peer, node, reason, "balancer move refused");
                        let _ = wire::send(&mut s, &Msg::Refused { reason });
                        return;
                    }
                }
                let host = om_remote::Host {
                    node: self.cfg.node_id,
                    accept: self.accepts.load(Ordering::SeqCst),
                    max_guests: self.cfg.max_guests,
                    cgroups: self.cfg.cgroups.clone(),
                    consistent_paths: self.cfg.consistent_paths.clone(),
                };
                if let Err(e) = om_remote::host_guest(s, offer, &host) {
                    tracing::warn!(%peer, %e, "incoming migration failed");
                }
            }
            Ok(Msg::Nodes) => {
                let _ = wire::send(&mut s, &Msg::NodesReply(self.nodes()));
            }
            Ok(m) => tracing::warn!(%peer, ?m, "unexpected request on a node link; closing it"),
            Err(e) => tracing::warn!(%peer, %e, "malformed frame on a node link; closing it"),
        }
    }
}

impl Node {
    /// Whether to take a guest the balancer of another node sends, by this
    /// node's own fresh figures (`assumed` < 0: a manual move, always).
    fn admit(&self, assumed: f64) -> Result<(), String> {
        if assumed < 0.0 || !self.accepts.load(Ordering::SeqCst) {
            return Ok(()); // the remote refuses a blocked node's guests itself
        }
        let mut recent = self.admitted.lock().unwrap_or_else(|p| p.into_inner());
        recent.retain(|t| t.elapsed() < Duration::from_millis(1000));
        let mut me = self.own_load();
        me.demand += recent.len() as f64;
        policy::admit(&me, assumed)?;
        recent.push(Instant::now());
        Ok(())
    }
}

/// A node as `omctl nodes` shows it, from its load record (zeros when none
/// arrived yet).
fn node_info(id: u32, addr: String, state: &str, rec: Option<&LoadRecord>, age_ms: u64) -> NodeInfo {
    NodeInfo {
        id,
        addr,
        state: state.into(),
        load: rec.map_or(0.0, |r| r.load),
        cpus: rec.map_or(0, |r| r.cpus),
        speed: rec.map_or(0.0, |r| r.speed),
        mem_total: rec.map_or(0, |r| r.mem_total),
        mem_free: rec.map_or(0, |r| r.mem_free),
        guests: rec.map_or(0, |r| r.guests),
        max_guests: rec.map_or(0, |r| r.max_guests),
        accepts: rec.is_some_and(|r| r.accepts),
        age_ms,
    }
}

/// A load record as the balancer sees it.
fn load_of(r: &LoadRecord) -> NodeLoad {
    NodeLoad {
        id: r.id,
        speed: r.speed,
        cpus: f64::from(r.cpus),
        demand: r.load * f64::from(r.cpus),
        mem_total: r.mem_total,
        mem_free: r.mem_free,
        guests: r.guests,
        max_guests: r.max_guests,
        accepts: r.accepts,
    }
}

/// True the first time an address is refused.
/// Merge the jobs of each gang (`gang_of` gives a process's gang, itself
/// included, sorted) into the job of its lowest pid: the sum of their
/// demand, memory and call rates, pinned if any member is, in flight if
/// any is. Returns the jobs and, for each other member, its gang's leader.
fn merge_gangs(jobs: Vec<JobLoad>, gang_of: impl Fn(i32) -> Vec<i32>) -> (Vec<JobLoad>, Vec<(i32, i32)>) {
    let mut out: Vec<JobLoad> = Vec::new();
    let mut followers = Vec::new();
    let leaders: HashMap<i32, i32> = jobs
        .iter()
        .map(|j| {
            let g = gang_of(j.pid);
            // The lowest member that has a job here leads.
            let lead = g.iter().copied().find(|m| jobs.iter().any(|k| k.pid == *m)).unwrap_or(j.pid);
            (j.pid, lead)
        })
        .collect();
    for j in jobs.iter().filter(|j| leaders.get(&j.pid) == Some(&j.pid)) {
        let mut lead = j.clone();
        for m in jobs.iter().filter(|m| m.pid != j.pid && leaders.get(&m.pid) == Some(&j.pid)) {
            // Call rates are per CPU-second: weighted by demand.
            let d = lead.demand + m.demand;
            if d > 0.0 {
                lead.calls_per_cpu_s = (lead.calls_per_cpu_s * lead.demand + m.calls_per_cpu_s * m.demand) / d;
                lead.bytes_per_cpu_s = (lead.bytes_per_cpu_s * lead.demand + m.bytes_per_cpu_s * m.demand) / d;
            }
            lead.demand = d;
            lead.rss += m.rss;
            lead.age = lead.age.min(m.age);
            lead.since_move = lead.since_move.min(m.since_move);
            lead.in_flight |= m.in_flight;
            lead.measured &= m.measured;
            if lead.pin.is_none() {
                lead.pin = m.pin.clone();
            }
            followers.push((m.pid, j.pid));
        }
        out.push(lead);
    }
    (out, followers)
}

/// How long a check of why a process cannot move is reused.
const CANT_MOVE_TTL: Duration = Duration::from_millis(2500);

/// Whether a member's failed move only says its process ended on the way.
fn ended_on_the_way(e: &str) -> bool {
    e.contains(om_runtime::gang::ENDED) || e.contains("ended before it could move")
}

fn refused_first(ip: std::net::IpAddr) -> bool {
    static SEEN: Mutex<Option<std::collections::HashSet<std::net::IpAddr>>> = Mutex::new(None);
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Default::default).insert(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(pid: i32, demand: f64) -> JobLoad {
        JobLoad {
            pid,
            at: 1,
            demand,
            age: 10.0,
            rss: 1 << 20,
            calls_per_cpu_s: 0.0,
            bytes_per_cpu_s: 0.0,
            pin: None,
            since_move: f64::INFINITY,
            in_flight: false,
            measured: true,
        }
    }

    #[test]
    fn a_gang_is_one_job_with_the_sum_of_its_demand() {
        let mut jobs = vec![job(10, 0.9), job(11, 0.8), job(12, 0.7), job(20, 1.0)];
        jobs[2].pin = Some(Pin::Locked);
        jobs[1].calls_per_cpu_s = 100.0;
        let gang = |p: i32| if (10..=12).contains(&p) { vec![10, 11, 12] } else { vec![p] };
        let (merged, followers) = merge_gangs(jobs, gang);
        assert_eq!(merged.len(), 2);
        let g = &merged[0];
        assert_eq!(g.pid, 10);
        assert!((g.demand - 2.4).abs() < 1e-9, "{}", g.demand);
        assert_eq!(g.rss, 3 << 20);
        assert_eq!(g.pin, Some(Pin::Locked), "a pinned member pins its gang");
        assert!((g.calls_per_cpu_s - 100.0 * 0.8 / 2.4).abs() < 1e-9);
        assert_eq!(followers, vec![(11, 10), (12, 10)]);
        assert_eq!(merged[1].pid, 20);
    }
}
