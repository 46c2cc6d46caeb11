//! The node daemon: control socket (om-exec, omctl), node links (incoming
//! migrations), the table of processes under om, and one controller thread
//! per migrated process.

use crate::membership::{Health, LoadRecord, Membership, SharedView};
use crossbeam::channel::{self, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use om_deputy::{Ctl, Plan, StateFn};
use om_runtime::link::{ClusterKey, Link};
use om_runtime::procfs;
use om_runtime::wire::{self, Msg, NodeInfo, ProcInfo, WireError};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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
}

/// A process under om on this node (its home).
struct Proc {
    cmd: String,
    state: String,
    where_: u32,
    locked: bool,
    ctl: Option<Sender<Ctl>>,
}

pub struct Node {
    cfg: Config,
    procs: Mutex<HashMap<i32, Proc>>,
    view: SharedView,
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

    let node = Arc::new(Node { cfg, procs: Mutex::new(HashMap::new()), view });
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

/// The command line of a process, arguments joined by spaces.
fn cmdline(pid: i32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let s: Vec<String> =
        raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    (!s.is_empty()).then(|| s.join(" "))
}

fn peer_uid(s: &UnixStream) -> Option<u32> {
    nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials).ok().map(|c| c.uid())
}

fn owner_uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid())
}

impl Node {
    fn state_fn(self: &Arc<Self>) -> StateFn {
        let n = Arc::downgrade(self);
        Arc::new(move |pid, state, where_| {
            if let Some(n) = n.upgrade() {
                let mut procs = n.procs.lock().unwrap_or_else(|p| p.into_inner());
                if state == "exited" {
                    procs.remove(&pid);
                } else if let Some(p) = procs.get_mut(&pid) {
                    p.state = state.to_string();
                    p.where_ = where_;
                    if state == "home" {
                        p.ctl = None;
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
                    for ev in evs {
                        if let crate::sys::ProcEvent::Fork { parent, child } = ev {
                            if procs.contains_key(&parent) && !procs.contains_key(&child) {
                                let cmd = cmdline(child).unwrap_or_default();
                                procs.insert(
                                    child,
                                    Proc {
                                        cmd,
                                        state: "home".into(),
                                        where_: self.cfg.node_id,
                                        locked: false,
                                        ctl: None,
                                    },
                                );
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
        procs.retain(|pid, p| {
            p.state != "home" || procfs::stat(*pid).map(|s| s.state() != 'Z' && s.state() != 'X').unwrap_or(false)
        });
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
            let reply = self.control(msg, uid);
            if wire::send(&mut s, &reply).is_err() {
                return;
            }
        }
    }

    fn allowed(&self, uid: Option<u32>, pid: i32) -> bool {
        matches!(uid, Some(0)) || (uid.is_some() && uid == owner_uid(pid))
    }

    fn control(self: &Arc<Self>, msg: Msg, uid: Option<u32>) -> Msg {
        let err = |m: String| Msg::Error { message: m };
        match msg {
            Msg::Register { pid, cmd } => {
                if procfs::stat(pid).is_err() {
                    return err(format!("no process {pid}"));
                }
                if !self.allowed(uid, pid) {
                    return err(format!("permission denied: process {pid} belongs to another user"));
                }
                let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
                procs.insert(
                    pid,
                    Proc { cmd, state: "home".into(), where_: self.cfg.node_id, locked: false, ctl: None },
                );
                if let Err(e) = procfs::join_cgroups(pid, &self.cfg.cgroups) {
                    tracing::warn!(pid, %e, "cannot put the process in this node's cgroup");
                }
                tracing::info!(pid, "registered");
                Msg::Ok
            }
            Msg::Ps => {
                self.prune();
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
                            om_runtime::image::cant_move(*pid).unwrap_or_default()
                        } else {
                            String::new()
                        },
                    })
                    .collect();
                v.sort_by_key(|p| p.pid);
                Msg::PsReply(v)
            }
            Msg::Nodes => Msg::NodesReply(self.nodes()),
            Msg::Migrate { pid, to } => match self.migrate(pid, to, uid) {
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
            v.push(NodeInfo {
                id,
                addr: s.addr.to_string(),
                state: s.health.as_str().into(),
                load: rec.map_or(0.0, |r| r.load),
                cpus: rec.map_or(0, |r| r.cpus),
                speed: rec.map_or(0.0, |r| r.speed),
                mem_free: rec.map_or(0, |r| r.mem_free),
                guests: rec.map_or(0, |r| r.guests),
                max_guests: rec.map_or(0, |r| r.max_guests),
                accepts: rec.is_some_and(|r| r.accepts),
                age_ms: age,
            });
        }
        v
    }

    /// This node's figures, as it spreads them.
    pub fn own_record(&self) -> LoadRecord {
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse().ok()))
            .unwrap_or(0.0);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let mem_free = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| procfs::status_field_in(&s, "MemAvailable"))
            .and_then(|v| v.split_whitespace().next().and_then(|x| x.parse::<u64>().ok()))
            .map_or(0, |kb| kb * 1024);
        LoadRecord {
            id: self.cfg.node_id,
            stamp: 0,
            load: load / f64::from(cpus),
            cpus,
            speed: self.cfg.speed,
            mem_free,
            guests: om_remote::guests(),
            max_guests: self.cfg.max_guests,
            accepts: self.cfg.accept_guests,
        }
    }

    fn own_info(&self) -> NodeInfo {
        let r = self.own_record();
        NodeInfo {
            id: self.cfg.node_id,
            addr: self.cfg.listen.to_string(),
            state: "alive".into(),
            load: r.load,
            cpus: r.cpus,
            speed: r.speed,
            mem_free: r.mem_free,
            guests: r.guests,
            max_guests: r.max_guests,
            accepts: r.accepts,
            age_ms: 0,
        }
    }

    /// Where node `n` listens, if it is a live member.
    fn node_addr(&self, n: u32) -> Result<SocketAddr, String> {
        let me = self.cfg.node_id;
        let view = self.view.lock().unwrap_or_else(|p| p.into_inner());
        match view.nodes.get(&n) {
            Some(s) if s.health == Health::Down => Err(format!(
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

    fn migrate(self: &Arc<Self>, pid: i32, to: Option<u32>, uid: Option<u32>) -> Result<(), String> {
        let me = self.cfg.node_id;
        let to = to.filter(|&n| n != me);
        let (state, where_, ctl, locked) = {
            let procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            match procs.get(&pid) {
                Some(p) => (p.state.clone(), p.where_, p.ctl.clone(), p.locked),
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
            ("away", Some(n)) => {
                // Straight from the node it is on to node n.
                let ctl = ctl.ok_or("the process is between nodes; try again")?;
                let addr = addr.ok_or("no address")?;
                let (tx, rx) = channel::bounded(1);
                ctl.send(Ctl::MoveTo { dest: n, addr, reply: tx })
                    .map_err(|_| "the process's controller is gone".to_string())?;
                rx.recv_timeout(Duration::from_secs(120)).map_err(|_| "the move did not finish in 120 s".to_string())?
            }
            ("away", None) => {
                let ctl = ctl.ok_or("the process is between nodes; try again")?;
                let (tx, rx) = channel::bounded(1);
                ctl.send(Ctl::ComeHome(tx)).map_err(|_| "the process's controller is gone".to_string())?;
                rx.recv_timeout(Duration::from_secs(60))
                    .map_err(|_| "the process did not come home in 60 s".to_string())??;
                match (to, addr) {
                    (Some(n), Some(a)) => self.migrate_out(pid, n, a),
                    _ => Ok(()),
                }
            }
            ("home", Some(n)) => self.migrate_out(pid, n, addr.ok_or("no address")?),
            (s, _) => Err(format!("process {pid} is {s}; try again in a moment")),
        }
    }

    fn migrate_out(self: &Arc<Self>, pid: i32, dest: u32, addr: SocketAddr) -> Result<(), String> {
        let (reply_tx, reply_rx) = channel::bounded(1);
        let (ctl_tx, ctl_rx) = channel::unbounded();
        {
            let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = procs.get_mut(&pid) {
                p.state = "migrating".into();
                p.ctl = Some(ctl_tx);
            }
        }
        let plan = Plan { pid, home: self.cfg.node_id, dest, addr, key: self.cfg.key.clone() };
        let state = self.state_fn();
        std::thread::Builder::new()
            .name(format!("home-{pid}"))
            .spawn(move || om_deputy::migrate_and_control(plan, reply_tx, ctl_rx, state))
            .map_err(|e| format!("cannot start a controller: {e}"))?;
        reply_rx.recv().map_err(|_| "the migration thread died".to_string())?
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
                let host = om_remote::Host {
                    node: self.cfg.node_id,
                    accept: self.cfg.accept_guests,
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

/// True the first time an address is refused.
fn refused_first(ip: std::net::IpAddr) -> bool {
    static SEEN: Mutex<Option<std::collections::HashSet<std::net::IpAddr>>> = Mutex::new(None);
    SEEN.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Default::default).insert(ip)
}
