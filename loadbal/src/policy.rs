//! The balancing policy: which of this node's processes should move where.
//!
//! Pure decisions from load figures, with no clock, kernel or socket, so the
//! daemon and the simulator ([`crate::simulate`]) run the same code.
//!
//! The cost model follows the opportunity-cost approach (Amir, Awerbuch,
//! Barak et al., IEEE TPDS 2000): every job on a node pays a price that grows
//! exponentially with the node's utilisation, and a node's memory adds a cost
//! exponential in the share of it in use. A job moves when taking it off its
//! node saves clearly more than adding it to another costs, after paying for
//! the move itself (resident memory over link bandwidth, against the time it
//! is expected to keep running) and for the calls it would send home.
//!
//! - Per-job CPU price on node n with demand L: `b^(slowdown - 1)`, where
//!   `slowdown = max(1, L/cpus) / speed` is how much slower than on an idle
//!   reference core a job runs there. Below saturation a job costs little (less
//!   on a faster node); each job beyond the node's cores makes every job there
//!   dearer, and equal prices mean load in proportion to speed.
//! - Memory: `b^(used/total / (1 - mem_low))`, so a node near its low-water mark
//!   is expensive to add to and cheap to take from.
//! - Expected remaining time: a process that has run t seconds is expected to
//!   run about t more (heavy-tailed lifetimes, Harchol-Balter and Downey).
//!
//! Oscillation is damped by a relative gain threshold (hysteresis), a minimum
//! residence time after each move, a minimum age, and at most one move in
//! flight per process.

/// One node as the balancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoad {
    pub id: u32,
    /// Relative speed of one core (1 = reference).
    pub speed: f64,
    /// Cores (may be fractional for a CPU quota).
    pub cpus: f64,
    /// Runnable demand: how many cores' worth of work wants to run there.
    pub demand: f64,
    pub mem_total: u64,
    pub mem_free: u64,
    pub guests: u32,
    pub max_guests: u32,
    /// Takes guests (not blocked).
    pub accepts: bool,
}

/// Why a process may not move at all.
#[derive(Clone, Debug, PartialEq)]
pub enum Pin {
    Locked,
    CantMove(String),
}

/// One process whose home is the deciding node.
#[derive(Clone, Debug, PartialEq)]
pub struct JobLoad {
    pub pid: i32,
    /// The node it runs on now.
    pub at: u32,
    /// Share of one core it wants (0..1): running or waiting to run.
    pub demand: f64,
    /// Seconds since it started.
    pub age: f64,
    pub rss: u64,
    /// Calls that go home when it runs away (its I/O calls), per second of
    /// CPU it runs: unlike a rate per wall second, this does not shrink when
    /// the process is starved of CPU or slowed down by the calls themselves.
    pub calls_per_cpu_s: f64,
    /// Bytes those calls carry, per second of CPU.
    pub bytes_per_cpu_s: f64,
    pub pin: Option<Pin>,
    /// Seconds since it last arrived where it is (infinite if it never moved).
    pub since_move: f64,
    pub in_flight: bool,
    /// Its demand and calls have been measured at least once.
    pub measured: bool,
}

/// Tuning of the policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Base of the exponential costs.
    pub base: f64,
    /// A move must cut the job's cost by this share, after overheads.
    pub gain: f64,
    /// Link bandwidth, bytes per second (migration time = rss / bandwidth).
    pub bandwidth: f64,
    /// Fixed cost of a migration, seconds.
    pub move_fixed: f64,
    /// Extra seconds per call sent home from away.
    pub call_cost: f64,
    /// A process younger than this (seconds) stays where it is.
    pub min_age: f64,
    /// Seconds a process stays after a move before it may move again.
    pub min_residence: f64,
    /// Share of memory that must stay free; below it, processes are ushered out.
    pub mem_low: f64,
    /// Moves per round, at most.
    pub max_moves: usize,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            base: 4.0,
            gain: 0.25,
            bandwidth: 1.0e9,
            move_fixed: 0.05,
            call_cost: 150e-6,
            min_age: 1.0,
            min_residence: 4.0,
            mem_low: 0.10,
            max_moves: 16,
        }
    }
}

/// One decided move.
#[derive(Clone, Debug, PartialEq)]
pub struct Move {
    pub pid: i32,
    pub from: u32,
    pub to: u32,
    /// Ushered out for memory (not for CPU).
    pub usher: bool,
    /// Share of the job's cost saved, after overheads.
    pub benefit: f64,
    /// The demand the mover believed `to` had before this move; the host
    /// refuses when it is clearly busier ([`admit`]).
    pub assumed: f64,
}

/// A host's check of an incoming move against its own fresh figures
/// (`me.demand` counting moves still landing): several nodes deciding on the
/// same stale gossip would otherwise all pick the same idle node.
pub fn admit(me: &NodeLoad, assumed: f64) -> Result<(), String> {
    let slack = (0.5 * me.cpus).max(1.0);
    if me.demand > assumed + slack && me.demand + 1.0 > me.cpus {
        return Err(format!(
            "node {} is busier than its last figures said (demand {:.1}, not {:.1}); the process stays",
            me.id, me.demand, assumed
        ));
    }
    Ok(())
}

/// Why a process stays where it is, for `omctl ps`.
#[derive(Clone, Debug, PartialEq)]
pub enum Stay {
    Locked,
    CantMove(String),
    Moving,
    Young { age: f64, min: f64 },
    Measuring,
    JustMoved { left: f64 },
    IoBound { share: f64 },
    Balanced { best: Option<(u32, f64)>, needed: f64 },
    NoTarget,
}

impl std::fmt::Display for Stay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stay::Locked => write!(f, "locked"),
            Stay::CantMove(why) => write!(f, "cannot migrate: {why}"),
            Stay::Moving => write!(f, "moving"),
            Stay::Young { age, min } => write!(f, "young ({age:.1} s; may move after {min:.0} s)"),
            Stay::Measuring => write!(f, "being measured"),
            Stay::JustMoved { left } => write!(f, "just moved (stays {left:.1} s more)"),
            Stay::IoBound { share } => {
                write!(f, "I/O-bound: calls home would cost {:.0}% of its time away", share * 100.0)
            }
            Stay::Balanced { best: Some((n, g)), needed } => {
                write!(f, "balanced: node {n} would save {:.0}% (needs {:.0}%)", g * 100.0, needed * 100.0)
            }
            Stay::Balanced { best: None, .. } => write!(f, "balanced: no node is better"),
            Stay::NoTarget => write!(f, "no other node takes guests"),
        }
    }
}

/// A round's outcome: moves to make, and why every other job stays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Decision {
    pub moves: Vec<Move>,
    pub stays: Vec<(i32, Stay)>,
}

fn clamp_exp(base: f64, x: f64) -> f64 {
    base.powf(x.clamp(-50.0, 200.0))
}

/// Cost of a node carrying `demand` cores of work (the sum over its jobs of
/// their exponential price).
pub fn cpu_cost(p: &Params, n: &NodeLoad, demand: f64) -> f64 {
    let cpus = n.cpus.max(0.01);
    let speed = n.speed.max(0.01);
    let slowdown = (demand / cpus).max(1.0) / speed;
    demand.max(0.0) * clamp_exp(p.base, slowdown - 1.0)
}

/// Cost of a node's memory when `used` bytes are in use.
pub fn mem_cost(p: &Params, n: &NodeLoad, used: f64) -> f64 {
    if n.mem_total == 0 {
        return 0.0;
    }
    let u = used / n.mem_total as f64;
    clamp_exp(p.base, u / (1.0 - p.mem_low).max(0.05))
}

fn mem_used(n: &NodeLoad) -> f64 {
    n.mem_total.saturating_sub(n.mem_free) as f64
}

/// Whether node `n` is short of memory.
pub fn mem_short(p: &Params, n: &NodeLoad) -> bool {
    n.mem_total > 0 && (n.mem_free as f64) < p.mem_low * n.mem_total as f64
}

/// Whether `n` has room for `rss` more bytes, keeping `margin` times the
/// low-water mark free.
fn mem_room(p: &Params, n: &NodeLoad, rss: u64, margin: f64) -> bool {
    n.mem_total == 0 || n.mem_free as f64 - rss as f64 >= margin * p.mem_low * n.mem_total as f64
}

/// The saving of taking job `j` off `from` (its cost there).
fn cost_off(p: &Params, from: &NodeLoad, j: &JobLoad) -> f64 {
    let d = j.demand.max(0.0);
    let cpu = cpu_cost(p, from, from.demand) - cpu_cost(p, from, (from.demand - d).max(0.0));
    let used = mem_used(from);
    cpu + mem_cost(p, from, used) - mem_cost(p, from, (used - j.rss as f64).max(0.0))
}

/// The cost of adding job `j` to `to`.
fn cost_on(p: &Params, to: &NodeLoad, j: &JobLoad) -> f64 {
    let d = j.demand.max(0.0);
    let cpu = cpu_cost(p, to, to.demand + d) - cpu_cost(p, to, to.demand);
    let used = mem_used(to);
    cpu + mem_cost(p, to, used + j.rss as f64) - mem_cost(p, to, used)
}

/// Seconds a job away from home would wait on calls home for each second
/// of CPU it runs (how much slower it gets away).
pub fn io_share(p: &Params, j: &JobLoad) -> f64 {
    j.calls_per_cpu_s * p.call_cost + j.bytes_per_cpu_s / p.bandwidth.max(1.0)
}

/// Whether node `to` can take job `j` as a guest (home always takes its own).
fn can_host(p: &Params, home: u32, to: &NodeLoad, j: &JobLoad, mem_margin: f64) -> bool {
    to.id == home || (to.accepts && to.guests < to.max_guests && to.cpus > 0.0 && mem_room(p, to, j.rss, mem_margin))
}

/// Decide this round's moves for the jobs whose home is `home`.
///
/// `nodes` are the candidates (they must include every node a job runs on,
/// and home); nodes missing from it are treated as unreachable. The figures
/// are updated as moves are chosen, so one round never piles every job onto
/// the same idle node.
pub fn decide(home: u32, nodes: &[NodeLoad], jobs: &[JobLoad], p: &Params) -> Decision {
    let mut nodes: Vec<NodeLoad> = nodes.to_vec();
    let idx = |nodes: &[NodeLoad], id: u32| nodes.iter().position(|n| n.id == id);
    let mut out = Decision::default();
    let mut open: Vec<&JobLoad> = Vec::new();
    for j in jobs {
        let stay = match &j.pin {
            Some(Pin::Locked) => Some(Stay::Locked),
            Some(Pin::CantMove(w)) => Some(Stay::CantMove(w.clone())),
            None if j.in_flight => Some(Stay::Moving),
            None if idx(&nodes, j.at).is_none() => Some(Stay::NoTarget),
            None => None,
        };
        match stay {
            Some(s) => out.stays.push((j.pid, s)),
            None => open.push(j),
        }
    }

    // Memory first: usher jobs off nodes short of memory, biggest first,
    // to the node with room where they cost least.
    open.sort_by(|a, b| b.rss.cmp(&a.rss).then(a.pid.cmp(&b.pid)));
    let mut left: Vec<&JobLoad> = Vec::new();
    for j in open {
        let Some(si) = idx(&nodes, j.at) else { continue };
        if out.moves.len() >= p.max_moves || !mem_short(p, &nodes[si]) {
            left.push(j);
            continue;
        }
        let mut best: Option<(usize, f64)> = None;
        for (ti, t) in nodes.iter().enumerate() {
            if ti == si || !can_host(p, home, t, j, 1.0) || mem_short(p, t) {
                continue;
            }
            let c = cost_on(p, t, j);
            if best.is_none_or(|(_, b)| c < b) {
                best = Some((ti, c));
            }
        }
        match best {
            Some((ti, _)) => {
                let assumed = nodes[ti].demand;
                apply(&mut nodes, si, ti, j, home);
                out.moves.push(Move { pid: j.pid, from: j.at, to: nodes[ti].id, usher: true, benefit: 1.0, assumed });
            }
            None => left.push(j),
        }
    }

    // CPU: repeatedly take the single best move among the remaining jobs.
    let mut blocked: Vec<(i32, Stay)> = Vec::new();
    let mut cands: Vec<&JobLoad> = Vec::new();
    for j in left {
        if j.age < p.min_age {
            blocked.push((j.pid, Stay::Young { age: j.age, min: p.min_age }));
        } else if !j.measured {
            blocked.push((j.pid, Stay::Measuring));
        } else if j.since_move < p.min_residence {
            blocked.push((j.pid, Stay::JustMoved { left: p.min_residence - j.since_move }));
        } else {
            cands.push(j);
        }
    }
    loop {
        let mut best: Option<(usize, usize, f64)> = None; // (job, target, benefit)
        let mut why: Vec<(i32, Stay)> = Vec::new();
        for (k, j) in cands.iter().enumerate() {
            let Some(si) = idx(&nodes, j.at) else { continue };
            let off = cost_off(p, &nodes[si], j);
            let io = io_share(p, j);
            let io_here = if j.at == home { 0.0 } else { io };
            // Expected remaining time: about its age.
            let overhead = (p.move_fixed + j.rss as f64 / p.bandwidth.max(1.0)) / j.age.max(p.min_age);
            let mut mine: Option<(usize, f64)> = None;
            let mut any = false;
            for (ti, t) in nodes.iter().enumerate() {
                if ti == si || !can_host(p, home, t, j, 1.5) {
                    continue;
                }
                any = true;
                let io_there = if t.id == home { 0.0 } else { io };
                let saved = if off > 0.0 { (off - cost_on(p, t, j)) / off } else { 0.0 };
                let benefit = saved - overhead - io_there + io_here;
                if mine.is_none_or(|(_, b)| benefit > b) {
                    mine = Some((ti, benefit));
                }
            }
            match mine {
                Some((ti, b)) if b > p.gain => {
                    if best.is_none_or(|(_, _, bb)| b > bb) {
                        best = Some((k, ti, b));
                    }
                }
                Some((ti, b)) => {
                    let stay = if io >= 0.5 && j.at == home && nodes[ti].id != home {
                        Stay::IoBound { share: io }
                    } else {
                        Stay::Balanced { best: (b > 0.0).then(|| (nodes[ti].id, b)), needed: p.gain }
                    };
                    why.push((j.pid, stay));
                }
                None if any => why.push((j.pid, Stay::Balanced { best: None, needed: p.gain })),
                None => why.push((j.pid, Stay::NoTarget)),
            }
        }
        match best {
            Some((k, ti, b)) if out.moves.len() < p.max_moves => {
                let j = cands.remove(k);
                let si = idx(&nodes, j.at).unwrap_or(ti);
                let assumed = nodes[ti].demand;
                apply(&mut nodes, si, ti, j, home);
                out.moves.push(Move { pid: j.pid, from: j.at, to: nodes[ti].id, usher: false, benefit: b, assumed });
            }
            _ => {
                out.stays.extend(why);
                break;
            }
        }
    }
    out.stays.extend(blocked);
    out.stays.sort_by_key(|(pid, _)| *pid);
    out
}

/// Update the figures as if job `j` had moved from `nodes[si]` to `nodes[ti]`.
fn apply(nodes: &mut [NodeLoad], si: usize, ti: usize, j: &JobLoad, home: u32) {
    let d = j.demand.max(0.0);
    nodes[si].demand = (nodes[si].demand - d).max(0.0);
    nodes[si].mem_free = nodes[si].mem_free.saturating_add(j.rss).min(nodes[si].mem_total.max(nodes[si].mem_free));
    if nodes[si].id != home {
        nodes[si].guests = nodes[si].guests.saturating_sub(1);
    }
    nodes[ti].demand += d;
    nodes[ti].mem_free = nodes[ti].mem_free.saturating_sub(j.rss);
    if nodes[ti].id != home {
        nodes[ti].guests += 1;
    }
}

/// Seconds a node measures its demand over (its figures are a mean).
pub const WINDOW: f64 = 1.0;
/// Seconds a move takes to land, about.
pub const LAND: f64 = 0.1;

/// Moves this node made that the others' figures may not show yet. The
/// daemon and the simulator add them to what gossip reports: in full before
/// the move landed, and less as the measuring window of a newer record
/// covers more of the time since.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    moves: Vec<PendingMove>,
}

#[derive(Clone, Debug)]
struct PendingMove {
    pid: i32,
    /// When it landed (or was decided, while `flying`).
    when: f64,
    flying: bool,
    from: u32,
    to: u32,
    demand: f64,
    rss: u64,
}

impl Pending {
    /// A move decided at `now`; it counts in full until it lands.
    pub fn add(&mut self, pid: i32, now: f64, from: u32, to: u32, demand: f64, rss: u64) {
        self.moves.retain(|m| m.pid != pid);
        let demand = demand.clamp(0.0, 1.0);
        self.moves.push(PendingMove { pid, when: now, flying: true, from, to, demand, rss });
    }

    /// The move of `pid` landed at `now`.
    pub fn landed(&mut self, pid: i32, now: f64) {
        for m in self.moves.iter_mut().filter(|m| m.pid == pid) {
            m.when = now - LAND;
            m.flying = false;
        }
    }

    /// The move of `pid` did not happen.
    pub fn cancel(&mut self, pid: i32) {
        self.moves.retain(|m| m.pid != pid);
    }

    /// Correct `nodes`: `made(id)` says when node id's figures were made (in
    /// the same clock as `now`). Landed moves older than `keep` seconds are
    /// dropped.
    pub fn correct(&mut self, nodes: &mut [NodeLoad], now: f64, keep: f64, made: impl Fn(u32) -> f64) {
        self.moves.retain(|m| m.flying || now - m.when < keep);
        for m in &self.moves {
            for n in nodes.iter_mut() {
                let unseen = if m.flying { 1.0 } else { 1.0 - ((made(n.id) - m.when - LAND) / WINDOW).clamp(0.0, 1.0) };
                if unseen <= 0.0 {
                    continue;
                }
                if n.id == m.to {
                    n.demand += m.demand * unseen;
                    n.mem_free = n.mem_free.saturating_sub(m.rss);
                } else if n.id == m.from {
                    n.demand = (n.demand - m.demand * unseen).max(0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u32, speed: f64, cpus: f64, demand: f64) -> NodeLoad {
        NodeLoad {
            id,
            speed,
            cpus,
            demand,
            mem_total: 8 << 30,
            mem_free: 6 << 30,
            guests: 0,
            max_guests: 64,
            accepts: true,
        }
    }

    fn job(pid: i32, at: u32) -> JobLoad {
        JobLoad {
            pid,
            at,
            demand: 1.0,
            age: 30.0,
            rss: 20 << 20,
            calls_per_cpu_s: 0.0,
            bytes_per_cpu_s: 0.0,
            pin: None,
            since_move: 30.0,
            in_flight: false,
            measured: true,
        }
    }

    fn targets(d: &Decision) -> Vec<u32> {
        let mut v: Vec<u32> = d.moves.iter().map(|m| m.to).collect();
        v.sort_unstable();
        v
    }

    #[test]
    fn spreads_a_burst_over_idle_nodes() {
        let p = Params { max_moves: 16, ..Params::default() };
        let nodes = [node(1, 1.0, 1.0, 8.0), node(2, 1.0, 1.0, 0.0), node(3, 1.0, 1.0, 0.0), node(4, 1.0, 1.0, 0.0)];
        let jobs: Vec<JobLoad> = (0..8).map(|i| job(100 + i, 1)).collect();
        let d = decide(1, &nodes, &jobs, &p);
        assert_eq!(targets(&d), vec![2, 2, 3, 3, 4, 4], "{d:?}");
    }

    #[test]
    fn no_move_between_equal_nodes_one_apart() {
        let p = Params::default();
        let nodes = [node(1, 1.0, 1.0, 3.0), node(2, 1.0, 1.0, 2.0)];
        let jobs: Vec<JobLoad> = (0..3).map(|i| job(100 + i, 1)).collect();
        let d = decide(1, &nodes, &jobs, &p);
        assert!(d.moves.is_empty(), "{d:?}");
        assert!(matches!(d.stays[0].1, Stay::Balanced { .. }));
    }

    #[test]
    fn faster_node_takes_proportionally_more() {
        let p = Params { max_moves: 16, ..Params::default() };
        let nodes = [node(1, 0.5, 1.0, 7.0), node(2, 2.0, 1.0, 0.0)];
        let jobs: Vec<JobLoad> = (0..7).map(|i| job(100 + i, 1)).collect();
        let d = decide(1, &nodes, &jobs, &p);
        // Speed 2 against 0.5: about four times the jobs (5.6 of 7).
        assert_eq!(d.moves.len(), 6, "{d:?}");
    }

    #[test]
    fn no_pointless_move_below_saturation() {
        let p = Params::default();
        let nodes = [node(1, 1.0, 2.0, 2.0), node(2, 1.0, 2.0, 0.0)];
        let jobs: Vec<JobLoad> = (0..2).map(|i| job(100 + i, 1)).collect();
        assert!(decide(1, &nodes, &jobs, &p).moves.is_empty());
    }

    /// A job's demand counts all its threads: a 4-thread job goes to the
    /// idle 4-core node, not the idle 1-core one.
    #[test]
    fn a_job_of_four_threads_goes_where_four_cores_are_free() {
        let p = Params::default();
        let nodes = [node(1, 1.0, 2.0, 6.0), node(2, 1.0, 1.0, 0.0), node(3, 1.0, 4.0, 0.0)];
        let mut j = job(100, 1);
        j.demand = 4.0;
        let d = decide(1, &nodes, &[j], &p);
        assert_eq!(targets(&d), vec![3], "{d:?}");
    }

    #[test]
    fn pins_age_residence_and_in_flight_hold() {
        let p = Params::default();
        let nodes = [node(1, 1.0, 1.0, 5.0), node(2, 1.0, 1.0, 0.0)];
        let mut jobs: Vec<JobLoad> = (0..5).map(|i| job(100 + i, 1)).collect();
        jobs[0].pin = Some(Pin::Locked);
        jobs[1].pin = Some(Pin::CantMove("uses a device".into()));
        jobs[2].age = 0.2;
        jobs[3].since_move = 1.0;
        jobs[4].in_flight = true;
        let d = decide(1, &nodes, &jobs, &p);
        assert!(d.moves.is_empty(), "{d:?}");
        let why: Vec<String> = d.stays.iter().map(|(_, s)| s.to_string()).collect();
        assert!(why[0] == "locked" && why[1].contains("device") && why[2].starts_with("young"), "{why:?}");
        assert!(why[3].starts_with("just moved") && why[4] == "moving", "{why:?}");
    }

    #[test]
    fn io_heavy_job_stays_home_and_comes_back() {
        let p = Params::default();
        let mut io = job(100, 1);
        io.calls_per_cpu_s = 20_000.0;
        let nodes = [node(1, 1.0, 1.0, 3.0), node(2, 1.0, 1.0, 0.0)];
        let d = decide(1, &nodes, &[io.clone()], &p);
        assert!(d.moves.is_empty(), "{d:?}");
        assert!(matches!(d.stays[0].1, Stay::IoBound { .. }), "{d:?}");
        // Away, waiting on calls most of the time, it comes home.
        io.at = 2;
        io.demand = 0.25;
        let nodes = [node(1, 1.0, 1.0, 1.0), node(2, 1.0, 1.0, 1.0)];
        let d = decide(1, &nodes, &[io], &p);
        assert_eq!(targets(&d), vec![1], "{d:?}");
    }

    #[test]
    fn blocked_full_or_missing_nodes_take_nothing() {
        let p = Params::default();
        let mut blocked = node(2, 1.0, 1.0, 0.0);
        blocked.accepts = false;
        let mut full = node(3, 1.0, 1.0, 0.0);
        full.guests = 2;
        full.max_guests = 2;
        let nodes = [node(1, 1.0, 1.0, 4.0), blocked, full];
        let jobs: Vec<JobLoad> = (0..4).map(|i| job(100 + i, 1)).collect();
        let d = decide(1, &nodes, &jobs, &p);
        assert!(d.moves.is_empty(), "{d:?}");
        assert!(d.stays.iter().all(|(_, s)| *s == Stay::NoTarget), "{d:?}");
    }

    #[test]
    fn ushers_out_of_a_node_short_of_memory() {
        let p = Params::default();
        let mut home = node(1, 1.0, 4.0, 1.0);
        home.mem_free = 300 << 20; // under 10% of 8 GiB
        let mut big = job(100, 1);
        big.rss = 2 << 30;
        big.age = 0.1; // even a young one
        let small = job(101, 1);
        let nodes = [home, node(2, 1.0, 4.0, 3.0)];
        let d = decide(1, &nodes, &[big, small], &p);
        assert_eq!(d.moves.len(), 1, "{d:?}");
        assert!(d.moves[0].usher && d.moves[0].pid == 100, "{d:?}");
    }

    #[test]
    fn young_process_with_big_memory_waits_for_its_move_to_pay() {
        let p = Params::default();
        let nodes = [node(1, 1.0, 1.0, 2.0), node(2, 1.0, 1.0, 0.0)];
        let mut j = job(100, 1);
        j.rss = 4 << 30; // 4 s to move
        j.age = 3.0;
        assert!(decide(1, &nodes, &[j.clone()], &p).moves.is_empty());
        j.age = 60.0;
        assert_eq!(decide(1, &nodes, &[j], &p).moves.len(), 1);
    }

    #[test]
    fn pending_moves_count_until_a_newer_record() {
        let mut pend = Pending::default();
        pend.add(7, 9.0, 1, 2, 1.0, 0);
        // In flight: counted in full whatever the records.
        let mut nodes = vec![node(1, 1.0, 1.0, 4.0), node(2, 1.0, 1.0, 0.0)];
        pend.correct(&mut nodes, 9.9, 5.0, |_| 9.8);
        assert_eq!((nodes[0].demand, nodes[1].demand), (3.0, 1.0));
        pend.landed(7, 10.1);
        let mut nodes = vec![node(1, 1.0, 1.0, 4.0), node(2, 1.0, 1.0, 0.0)];
        pend.correct(&mut nodes, 10.5, 5.0, |_| 9.5);
        assert_eq!((nodes[0].demand, nodes[1].demand), (3.0, 1.0));
        // Half the window of a newer record saw it.
        let mut nodes = vec![node(1, 1.0, 1.0, 3.5), node(2, 1.0, 1.0, 0.5)];
        pend.correct(&mut nodes, 11.0, 5.0, |_| 10.6);
        assert!((nodes[0].demand - 3.0).abs() < 1e-9 && (nodes[1].demand - 1.0).abs() < 1e-9, "{nodes:?}");
        let mut nodes = vec![node(1, 1.0, 1.0, 3.0), node(2, 1.0, 1.0, 1.0)];
        pend.correct(&mut nodes, 12.0, 5.0, |_| 11.5);
        assert_eq!((nodes[0].demand, nodes[1].demand), (3.0, 1.0));
    }
}
