//! Cluster membership: SWIM through `foca`, driven by omd's mio loop, over
//! UDP datagrams sealed with the cluster key. Each node's load record rides
//! along as a foca custom broadcast.
//!
//! The loop owns [`Membership`]; other threads read the [`View`] it
//! publishes after every step.

use foca::{AccumulatingRuntime, BroadcastHandler, Config, Foca, Identity, Invalidates, Member, PostcardCodec, State};
use om_runtime::link::{self, ClusterKey};
use serde::{Deserialize, Serialize};
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::num::{NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A node as SWIM knows it: its id, its link address (TCP, and UDP for
/// gossip on the same port) and the start it belongs to.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct NodeId {
    pub id: u32,
    pub addr: SocketAddr,
    pub boot: u64,
}

impl Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeId { boot: self.boot + 1, ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.boot > adversary.boot
    }
}

/// What a node tells the cluster about itself.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct LoadRecord {
    pub id: u32,
    /// Milliseconds since the epoch when it was made; newer replaces older.
    pub stamp: u64,
    /// Runnable demand per core (1.0: every core busy).
    pub load: f64,
    pub cpus: u32,
    pub speed: f64,
    pub mem_total: u64,
    pub mem_free: u64,
    pub guests: u32,
    pub max_guests: u32,
    pub accepts: bool,
}

/// A record as one node holds it, with when it arrived.
#[derive(Clone, Debug)]
pub struct Known {
    pub rec: LoadRecord,
    pub got: Instant,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Health {
    Alive,
    Suspect,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Alive => "alive",
            Health::Suspect => "suspect",
            Health::Down => "down",
        }
    }
}

/// One node as this node sees it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub addr: SocketAddr,
    pub health: Health,
    pub since: Instant,
    pub load: Option<Known>,
}

/// The membership as the loop last published it.
#[derive(Default)]
pub struct View {
    pub nodes: HashMap<u32, Seen>,
}

pub type SharedView = Arc<Mutex<View>>;

/// Key of a load broadcast: one per node, newer stamps replace older.
pub struct LoadKey {
    id: u32,
    stamp: u64,
}

impl Invalidates for LoadKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.id == other.id && self.stamp >= other.stamp
    }
}

#[derive(Debug, thiserror::Error)]
#[error("bad load record: {0}")]
pub struct BadRecord(String);

struct Loads(Arc<Mutex<HashMap<u32, Known>>>);

impl BroadcastHandler<NodeId> for Loads {
    type Key = LoadKey;
    type Error = BadRecord;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&NodeId>) -> Result<Option<LoadKey>, BadRecord> {
        let rec: LoadRecord = postcard::from_bytes(data).map_err(|e| BadRecord(e.to_string()))?;
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(&rec.id).is_some_and(|k| k.rec.stamp >= rec.stamp) {
            return Ok(None);
        }
        let key = LoadKey { id: rec.id, stamp: rec.stamp };
        m.insert(rec.id, Known { rec, got: Instant::now() });
        Ok(Some(key))
    }
}

/// Tight settings: a dead node is `down` everywhere within about 3 s.
pub fn swim_config(cluster_size: u32) -> Config {
    let mut c = Config::new_lan(std::num::NonZeroU32::new(cluster_size.max(2)).expect("nonzero"));
    c.probe_period = Duration::from_millis(500);
    c.probe_rtt = Duration::from_millis(200);
    c.num_indirect_probes = NonZeroUsize::new(2).expect("nonzero");
    c.suspect_to_down_after = Duration::from_millis(1500);
    c.max_transmissions = NonZeroU8::new(8).expect("nonzero");
    c.remove_down_after = None;
    c.periodic_announce = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(5),
        num_members: NonZeroUsize::new(1).expect("nonzero"),
    });
    c.periodic_announce_to_down_members = Some(foca::PeriodicParams {
        frequency: Duration::from_secs(1),
        num_members: NonZeroUsize::new(3).expect("nonzero"),
    });
    c.periodic_gossip = Some(foca::PeriodicParams {
        frequency: Duration::from_millis(200),
        num_members: NonZeroUsize::new(3).expect("nonzero"),
    });
    c
}

/// Anti-replay state for the datagrams of one sender: its start, the highest
/// sequence number seen, and a 64-wide window below it.
#[derive(Default, Clone, Copy, Debug)]
pub struct Window {
    boot: u64,
    top: u64,
    seen: u64,
}

impl Window {
    /// Accept `(boot, seq)` once; a replayed, stale or too old datagram is refused.
    pub fn accept(&mut self, boot: u64, seq: u64) -> bool {
        if boot < self.boot {
            return false;
        }
        if boot > self.boot {
            *self = Window { boot, top: seq, seen: 1 };
            return true;
        }
        if seq > self.top {
            let shift = seq - self.top;
            self.seen = if shift >= 64 { 1 } else { (self.seen << shift) | 1 };
            self.top = seq;
            return true;
        }
        let back = self.top - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

type Timer = foca::Timer<NodeId>;

struct Due(Instant, u64, Timer);

impl PartialEq for Due {
    fn eq(&self, o: &Self) -> bool {
        (self.0, self.1) == (o.0, o.1)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Due {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Earliest first out of the (max-)heap.
        (o.0, o.1).cmp(&(self.0, self.1))
    }
}

/// Gossip header inside the sealed datagram: sender id, boot, sequence.
const HDR: usize = 20;

pub struct Membership {
    me: NodeId,
    foca: Foca<NodeId, PostcardCodec, rand::rngs::StdRng, Loads>,
    rt: AccumulatingRuntime<NodeId>,
    sock: UdpSocket,
    key: ClusterKey,
    timers: BinaryHeap<Due>,
    timer_seq: u64,
    seq: u64,
    windows: HashMap<u32, Window>,
    loads: Arc<Mutex<HashMap<u32, Known>>>,
    view: SharedView,
    seeds: Vec<SocketAddr>,
    /// Log each refused address once.
    refused: std::collections::HashSet<std::net::IpAddr>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Membership {
    pub fn new(
        me: u32,
        addr: SocketAddr,
        seeds: Vec<SocketAddr>,
        key: ClusterKey,
        view: SharedView,
    ) -> std::io::Result<Membership> {
        let sock = UdpSocket::bind(addr)?;
        sock.set_nonblocking(true)?;
        let boot = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        let me = NodeId { id: me, addr, boot };
        let loads = Arc::new(Mutex::new(HashMap::new()));
        let mut seed = [0u8; 32];
        om_runtime::sys::getrandom(&mut seed)?;
        let rng = <rand::rngs::StdRng as rand::SeedableRng>::from_seed(seed);
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            swim_config(seeds.len() as u32 + 1),
            rng,
            PostcardCodec,
            Loads(loads.clone()),
        );
        let mut m = Membership {
            me,
            foca,
            rt: AccumulatingRuntime::new(),
            sock,
            key,
            timers: BinaryHeap::new(),
            timer_seq: 0,
            seq: 0,
            windows: HashMap::new(),
            loads,
            view,
            seeds,
            refused: Default::default(),
        };
        // Seeds start as down placeholders (id 0): they are announced to until
        // they answer, and whenever they are down again.
        let placeholders: Vec<Member<NodeId>> =
            m.seeds.iter().map(|&a| Member::down(NodeId { id: 0, addr: a, boot: 0 })).collect();
        let _ = m.foca.apply_many(placeholders.into_iter(), false, &mut m.rt);
        for a in m.seeds.clone() {
            let _ = m.foca.announce(NodeId { id: 0, addr: a, boot: 0 }, &mut m.rt);
        }
        m.flush();
        Ok(m)
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.sock
    }

    /// Spread this node's current record.
    pub fn publish(&mut self, mut rec: LoadRecord) {
        rec.id = self.me.id;
        rec.stamp = now_ms()
            .max(self.loads.lock().unwrap_or_else(|p| p.into_inner()).get(&rec.id).map_or(0, |k| k.rec.stamp + 1));
        if let Ok(b) = postcard::to_allocvec(&rec) {
            let _ = self.foca.add_broadcast(&b);
        }
        self.flush();
    }

    /// Read every datagram waiting on the socket.
    pub fn readable(&mut self) {
        let mut buf = vec![0u8; 65536];
        loop {
            let (n, from) = match self.sock.recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(%e, "gossip socket");
                    break;
                }
            };
            let Some(plain) = link::open(&self.key, &buf[..n]) else {
                if self.refused.insert(from.ip()) {
                    tracing::warn!(peer = %from, "gossip from a node without this cluster's key refused");
                }
                continue;
            };
            if plain.len() < HDR {
                continue;
            }
            let id = u32::from_le_bytes(plain[0..4].try_into().expect("4 bytes"));
            let boot = u64::from_le_bytes(plain[4..12].try_into().expect("8 bytes"));
            let seq = u64::from_le_bytes(plain[12..20].try_into().expect("8 bytes"));
            if !self.windows.entry(id).or_default().accept(boot, seq) {
                tracing::debug!(peer = %from, id, seq, "replayed or stale gossip dropped");
                continue;
            }
            if let Err(e) = self.foca.handle_data(&plain[HDR..], &mut self.rt) {
                tracing::debug!(peer = %from, %e, "bad gossip");
            }
        }
        self.flush();
    }

    /// Fire due timers; returns how long until the next one.
    pub fn tick(&mut self) -> Duration {
        let now = Instant::now();
        while self.timers.peek().is_some_and(|d| d.0 <= now) {
            let Some(Due(_, _, t)) = self.timers.pop() else { break };
            let _ = self.foca.handle_timer(t, &mut self.rt);
            self.flush();
        }
        self.timers.peek().map_or(Duration::from_secs(1), |d| d.0.saturating_duration_since(Instant::now()))
    }

    /// Send what foca produced, schedule its timers, note its events, and
    /// publish the view.
    fn flush(&mut self) {
        loop {
            let mut did = false;
            while let Some((to, data)) = self.rt.to_send() {
                did = true;
                self.seq += 1;
                let mut plain = Vec::with_capacity(HDR + data.len());
                plain.extend_from_slice(&self.me.id.to_le_bytes());
                plain.extend_from_slice(&self.me.boot.to_le_bytes());
                plain.extend_from_slice(&self.seq.to_le_bytes());
                plain.extend_from_slice(&data);
                if let Some(d) = link::seal(&self.key, &plain) {
                    let _ = self.sock.send_to(&d, to.addr);
                }
            }
            while let Some((after, t)) = self.rt.to_schedule() {
                did = true;
                self.timer_seq += 1;
                self.timers.push(Due(Instant::now() + after, self.timer_seq, t));
            }
            while let Some(n) = self.rt.to_notify() {
                did = true;
                match n {
                    foca::OwnedNotification::MemberUp(m) if m.id != 0 => {
                        tracing::info!(node = m.id, addr = %m.addr, "node joined");
                    }
                    foca::OwnedNotification::MemberDown(m) if m.id != 0 => {
                        tracing::warn!(node = m.id, addr = %m.addr, "node is down");
                    }
                    foca::OwnedNotification::Defunct => {
                        // Declared down by the others while alive: come back
                        // under a renewed identity.
                        if let Some(n) = self.me.renew() {
                            self.me = n.clone();
                            let _ = self.foca.change_identity(n, &mut self.rt);
                        }
                    }
                    _ => {}
                }
            }
            if !did {
                break;
            }
        }
        self.publish_view();
    }

    fn publish_view(&mut self) {
        let loads = self.loads.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut v = self.view.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // The newest start of each node wins.
        let mut best: HashMap<u32, (&NodeId, State)> = HashMap::new();
        for m in self.foca.iter_membership_state() {
            let id = m.id();
            if id.id == 0 || id.id == self.me.id {
                continue;
            }
            if best.get(&id.id).is_none_or(|(b, _)| b.boot < id.boot) {
                best.insert(id.id, (id, m.state()));
            }
        }
        for (nid, (ident, st)) in best {
            let health = match st {
                State::Alive => Health::Alive,
                State::Suspect => Health::Suspect,
                State::Down => Health::Down,
            };
            let e = v.nodes.entry(nid).or_insert(Seen { addr: ident.addr, health, since: now, load: None });
            if e.health != health || e.addr != ident.addr {
                e.since = now;
            }
            e.health = health;
            e.addr = ident.addr;
        }
        for (nid, k) in loads {
            if let Some(e) = v.nodes.get_mut(&nid) {
                e.load = Some(k);
            } else if nid == self.me.id {
                v.nodes.insert(nid, Seen { addr: self.me.addr, health: Health::Alive, since: now, load: Some(k) });
            }
        }
        if let Some(me) = v.nodes.get_mut(&self.me.id) {
            me.health = Health::Alive;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_refuses_replays_and_stale_boots() {
        let mut w = Window::default();
        assert!(w.accept(5, 1));
        assert!(w.accept(5, 3));
        assert!(!w.accept(5, 3), "replay accepted");
        assert!(w.accept(5, 2), "late but new datagram refused");
        assert!(!w.accept(5, 2));
        assert!(w.accept(5, 100));
        assert!(!w.accept(5, 30), "too old accepted");
        assert!(!w.accept(4, 1000), "older boot accepted");
        assert!(w.accept(6, 1), "restart refused");
    }

    #[test]
    fn newer_load_records_replace_older() {
        let loads = Arc::new(Mutex::new(HashMap::new()));
        let mut h = Loads(loads.clone());
        let rec = |stamp, load| LoadRecord {
            id: 3,
            stamp,
            load,
            cpus: 2,
            speed: 1.0,
            mem_total: 2,
            mem_free: 1,
            guests: 0,
            max_guests: 8,
            accepts: true,
        };
        let enc = |r: &LoadRecord| postcard::to_allocvec(r).unwrap();
        assert!(h.receive_item(&enc(&rec(10, 0.5)), None).unwrap().is_some());
        assert!(h.receive_item(&enc(&rec(9, 0.9)), None).unwrap().is_none());
        assert!(h.receive_item(&enc(&rec(11, 0.7)), None).unwrap().is_some());
        assert_eq!(loads.lock().unwrap()[&3].rec.load, 0.7);
        assert!(h.receive_item(b"\xff\xff", None).is_err());
        let (a, b) = (LoadKey { id: 3, stamp: 11 }, LoadKey { id: 3, stamp: 10 });
        assert!(a.invalidates(&b) && !b.invalidates(&a));
    }
}
