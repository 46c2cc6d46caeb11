//! A deterministic cluster simulator that runs the balancer's own decision
//! code ([`crate::policy::decide`]) with no kernel and no sockets.
//!
//! Time advances in fixed steps. Each node shares its cores among the jobs
//! it runs (processor sharing at its speed), publishes its figures once a
//! second (others see them late, as with gossip), and twice a second decides
//! moves for the jobs whose home it is, seeing its own node, the nodes its
//! jobs run on and a random sample of others (as openMosix's load vector).
//! A move freezes the job for `move_fixed + rss / bandwidth`. A job away from
//! home runs slower by the share of its time its calls home take. A node that
//! fails loses the jobs it hosts; they are run again from the start at home,
//! as a user would. Everything is seeded: the same scenario gives the same
//! numbers.

use crate::policy::{self, JobLoad, NodeLoad, Params, Pending};

/// A node of a scenario.
#[derive(Clone, Debug)]
pub struct SimNode {
    pub speed: f64,
    pub cpus: f64,
    pub mem_total: u64,
    /// When it joins the cluster (0: from the start).
    pub join: f64,
    /// When it fails, if it does.
    pub fail: Option<f64>,
}

/// A job of a scenario.
#[derive(Clone, Debug)]
pub struct SimJob {
    pub arrival: f64,
    /// Index of its home node.
    pub home: usize,
    /// CPU seconds on a reference core.
    pub work: f64,
    pub rss: u64,
    /// Calls home per second of CPU when away.
    pub calls_per_cpu_s: f64,
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub nodes: Vec<SimNode>,
    pub jobs: Vec<SimJob>,
    pub seed: u64,
    /// Time step, seconds.
    pub dt: f64,
    /// Nodes each balancer samples besides its own and its jobs' nodes.
    pub sample: usize,
}

/// Where jobs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Every job runs on its home node.
    Home,
    /// Each home places its jobs round-robin over the live nodes at start
    /// (GNU parallel, a simple batch queue).
    RoundRobin,
    /// At start, the node where the job would finish first, knowing every
    /// job's true remaining work (omniscient).
    Greedy,
    /// Start at home; om's balancer moves jobs while they run.
    Om,
}

impl Placement {
    pub fn name(self) -> &'static str {
        match self {
            Placement::Home => "all at home",
            Placement::RoundRobin => "round-robin at start",
            Placement::Greedy => "omniscient greedy",
            Placement::Om => "om balancer",
        }
    }
}

/// What a run gives.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// Mean over jobs of (finish - arrival) / (work on an idle reference core).
    pub avg_slowdown: f64,
    /// Last finish minus first arrival.
    pub makespan: f64,
    pub migrations: usize,
    /// Moves the destination refused (it was busier than the mover thought).
    pub refused: usize,
    /// Jobs lost with a failed node and run again.
    pub restarts: usize,
    /// Jobs that moved twice within 10 s, after the first 10 s of their life.
    pub thrashing: usize,
    pub finished: usize,
    /// Share of the work each node did.
    pub work_share: Vec<f64>,
    /// Every move: (time, job, from node id, to node id).
    pub log: Vec<(f64, usize, u32, u32)>,
}

/// Deterministic random numbers (splitmix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    /// Bounded Pareto on [lo, hi] with shape `alpha` (heavy-tailed lengths).
    pub fn pareto(&mut self, alpha: f64, lo: f64, hi: f64) -> f64 {
        let u = self.unit();
        let r = (lo / hi).powf(alpha);
        lo / (1.0 - u * (1.0 - r)).powf(1.0 / alpha)
    }
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
}

struct Job {
    home: usize,
    at: usize,
    start: f64,
    remaining: f64,
    /// Frozen in a move until this time, toward this node.
    moving: Option<(f64, usize)>,
    arrived: f64,
    moves: Vec<f64>,
    done: Option<f64>,
    live: bool,
}

struct Node {
    alive: bool,
    /// Figures as last published, and when.
    rec: Option<(f64, NodeLoad)>,
    pending: Pending,
    rr: usize,
    phase: f64,
    down_since: Option<f64>,
    /// Demand over the last second, as the daemon measures it.
    window: std::collections::VecDeque<f64>,
}

const GOSSIP_PERIOD: f64 = 1.0;
/// Seconds between two decisions of a node's balancer.
const BALANCE_PERIOD: f64 = 0.5;
/// How long a failed node still looks alive to the others.
const DETECT: f64 = 2.0;

/// Run one scenario under one placement.
pub fn run(sc: &Scenario, pl: Placement, p: &Params) -> Outcome {
    let mut rng = Rng::new(sc.seed);
    let n = sc.nodes.len();
    let mut nodes: Vec<Node> = (0..n)
        .map(|i| Node {
            alive: false,
            rec: None,
            pending: Pending::default(),
            rr: i,
            phase: (i as f64 * 0.618_034).fract(),
            down_since: None,
            window: Default::default(),
        })
        .collect();
    let mut order: Vec<usize> = (0..sc.jobs.len()).collect();
    order.sort_by(|&a, &b| sc.jobs[a].arrival.total_cmp(&sc.jobs[b].arrival).then(a.cmp(&b)));
    let mut jobs: Vec<Job> = Vec::with_capacity(sc.jobs.len());
    let mut by_spec: Vec<usize> = vec![usize::MAX; sc.jobs.len()];
    let mut next = 0;
    let mut t = 0.0_f64;
    let dt = sc.dt;
    let (mut migrations, mut restarts) = (0, 0);
    let mut work_done = vec![0.0; n];
    let first = sc.jobs.iter().map(|j| j.arrival).fold(f64::INFINITY, f64::min);
    let mut live_jobs = 0usize;
    // Scratch: per node, demand of running jobs and backlog of work.
    let mut demand = vec![0.0; n];
    let mut backlog = vec![0.0; n];
    let mut mem_used = vec![0u64; n];
    let mut incoming = vec![0.0; n];
    let mut refused = 0;
    let mut log = Vec::new();
    let horizon = 1.0e6;
    let io_share = |spec: &SimJob| spec.calls_per_cpu_s * p.call_cost;
    while (next < order.len() || live_jobs > 0) && t < horizon {
        // Joins and failures.
        for (i, s) in sc.nodes.iter().enumerate() {
            let up = s.join <= t && s.fail.is_none_or(|f| t < f);
            if up && !nodes[i].alive && nodes[i].down_since.is_none() {
                nodes[i].alive = true;
            } else if !up && nodes[i].alive {
                nodes[i].alive = false;
                nodes[i].down_since = Some(t);
                for (k, j) in jobs.iter_mut().enumerate() {
                    let hit = j.live && (j.at == i || j.moving.is_some_and(|(_, d)| d == i));
                    if hit && j.home != i {
                        // Lost with the node: run again from the start at home.
                        let spec = &sc.jobs[by_spec[k]];
                        j.at = j.home;
                        j.remaining = spec.work;
                        j.moving = None;
                        j.start = t;
                        j.arrived = t;
                        restarts += 1;
                    } else if hit {
                        j.live = false;
                        j.done = Some(t);
                        live_jobs -= 1;
                    }
                }
            }
        }
        // Moves that land.
        for j in jobs.iter_mut().filter(|j| j.live) {
            if let Some((until, dest)) = j.moving {
                if until <= t {
                    j.moving = None;
                    j.arrived = t;
                    if nodes[dest].alive {
                        j.at = dest;
                    }
                }
            }
        }
        // Per-node figures now.
        demand.iter_mut().for_each(|d| *d = 0.0);
        backlog.iter_mut().for_each(|d| *d = 0.0);
        mem_used.iter_mut().for_each(|d| *d = 0);
        incoming.iter_mut().for_each(|d| *d = 0.0);
        for (k, j) in jobs.iter().enumerate().filter(|(_, j)| j.live) {
            let spec = &sc.jobs[by_spec[k]];
            mem_used[j.at] += spec.rss;
            backlog[j.at] += j.remaining;
            if let Some((_, dest)) = j.moving {
                incoming[dest] += 1.0;
            } else {
                demand[j.at] += if j.at == j.home { 1.0 } else { 1.0 / (1.0 + io_share(spec)) };
            }
        }
        // Arrivals.
        while next < order.len() && sc.jobs[order[next]].arrival <= t {
            let si = order[next];
            let spec = &sc.jobs[si];
            next += 1;
            let at = match pl {
                Placement::Home | Placement::Om => spec.home,
                Placement::RoundRobin => {
                    let live: Vec<usize> = (0..n).filter(|&i| nodes[i].alive).collect();
                    let h = &mut nodes[spec.home];
                    h.rr += 1;
                    live.get(h.rr % live.len().max(1)).copied().unwrap_or(spec.home)
                }
                Placement::Greedy => {
                    let mut best = (f64::INFINITY, spec.home);
                    for i in (0..n).filter(|&i| nodes[i].alive) {
                        let cap = sc.nodes[i].cpus * sc.nodes[i].speed;
                        let finish = ((backlog[i] + spec.work) / cap).max(spec.work / sc.nodes[i].speed);
                        if finish < best.0 {
                            best = (finish, i);
                        }
                    }
                    best.1
                }
            };
            backlog[at] += spec.work;
            demand[at] += 1.0;
            mem_used[at] += spec.rss;
            by_spec[jobs.len()] = si;
            jobs.push(Job {
                home: spec.home,
                at,
                start: t,
                remaining: spec.work,
                moving: None,
                arrived: t,
                moves: Vec::new(),
                done: None,
                live: true,
            });
            live_jobs += 1;
        }
        // Gossip and balancing, once a second per node at its own phase.
        let tick_every =
            |phase: f64, period: f64| ((t + phase) / period).floor() != ((t + phase + dt) / period).floor();
        let tick = |phase: f64| tick_every(phase, GOSSIP_PERIOD);
        let load_of = |i: usize, d: f64, used: u64, guests: u32| NodeLoad {
            id: i as u32 + 1,
            speed: sc.nodes[i].speed,
            cpus: sc.nodes[i].cpus,
            demand: d,
            mem_total: sc.nodes[i].mem_total,
            mem_free: sc.nodes[i].mem_total.saturating_sub(used),
            guests,
            max_guests: 1 << 20,
            accepts: true,
        };
        let per_second = (1.0 / dt).round().max(1.0) as usize;
        for i in 0..n {
            let node = &mut nodes[i];
            node.window.push_back(demand[i]);
            if node.window.len() > per_second {
                node.window.pop_front();
            }
            if node.alive && tick(node.phase) {
                let measured = node.window.iter().sum::<f64>() / node.window.len() as f64;
                node.rec = Some((t, load_of(i, measured, mem_used[i], 0)));
            }
        }
        if pl == Placement::Om {
            // Jobs of each home, in one pass.
            let mut mine: Vec<Vec<usize>> = vec![Vec::new(); n];
            for (k, j) in jobs.iter().enumerate().filter(|(_, j)| j.live) {
                mine[j.home].push(k);
            }
            for h in 0..n {
                if !nodes[h].alive || mine[h].is_empty() || !tick_every(nodes[h].phase + 0.25, BALANCE_PERIOD) {
                    continue;
                }
                // What home sees: itself now, others as last published while
                // they still look alive.
                let looks_alive = |i: usize| nodes[i].alive || nodes[i].down_since.is_some_and(|d| t - d < DETECT);
                let mut ids: Vec<usize> = vec![h];
                for &k in &mine[h] {
                    if !ids.contains(&jobs[k].at) {
                        ids.push(jobs[k].at);
                    }
                }
                if n <= sc.sample + 1 {
                    let rest: Vec<usize> = (0..n).filter(|i| !ids.contains(i)).collect();
                    ids.extend(rest);
                } else {
                    for _ in 0..sc.sample {
                        let c = rng.below(n);
                        if !ids.contains(&c) {
                            ids.push(c);
                        }
                    }
                }
                let mut view: Vec<NodeLoad> = Vec::new();
                let mut made: Vec<(u32, f64)> = Vec::new();
                for &i in &ids {
                    if i == h {
                        // Its own figures are fresh but measured over the
                        // last second, as the daemon's are.
                        let w = &nodes[i].window;
                        let measured = w.iter().sum::<f64>() / w.len().max(1) as f64;
                        view.push(load_of(i, measured, mem_used[i], 0));
                        made.push((i as u32 + 1, t));
                    } else if let (true, Some((m, rec))) = (looks_alive(i), &nodes[i].rec) {
                        view.push(rec.clone());
                        made.push((rec.id, *m));
                    }
                }
                nodes[h].pending.correct(&mut view, t, 4.0, |id| {
                    made.iter().find(|(i, _)| *i == id).map_or(f64::INFINITY, |(_, m)| *m)
                });
                let loads: Vec<JobLoad> = mine[h]
                    .iter()
                    .map(|&k| {
                        let j = &jobs[k];
                        let spec = &sc.jobs[by_spec[k]];
                        JobLoad {
                            pid: k as i32,
                            at: j.at as u32 + 1,
                            demand: 1.0,
                            age: t - j.start,
                            rss: spec.rss,
                            calls_per_cpu_s: spec.calls_per_cpu_s,
                            bytes_per_cpu_s: 0.0,
                            pin: None,
                            since_move: if j.moves.is_empty() { f64::INFINITY } else { t - j.arrived },
                            in_flight: j.moving.is_some(),
                            measured: true,
                        }
                    })
                    .collect();
                let d = policy::decide(h as u32 + 1, &view, &loads, p);
                for m in d.moves {
                    let to = m.to as usize - 1;
                    // The host checks its own figures, fresh, with moves still
                    // landing there.
                    let fresh = load_of(to, demand[to] + incoming[to], mem_used[to], 0);
                    if to != h && policy::admit(&fresh, m.assumed).is_err() {
                        refused += 1;
                        continue;
                    }
                    incoming[to] += 1.0;
                    let k = m.pid as usize;
                    let spec = &sc.jobs[by_spec[k]];
                    let (from, to) = (m.from as usize - 1, m.to as usize - 1);
                    let j = &mut jobs[k];
                    j.moving = Some((t + p.move_fixed + spec.rss as f64 / p.bandwidth, to));
                    j.moves.push(t);
                    log.push((t, k, m.from, m.to));
                    migrations += 1;
                    nodes[h].pending.add(k as i32, t, m.from, m.to, 1.0, spec.rss);
                    nodes[h].pending.landed(k as i32, t + p.move_fixed + spec.rss as f64 / p.bandwidth);
                    let d = if from == j.home { 1.0 } else { 1.0 / (1.0 + io_share(spec)) };
                    demand[from] = (demand[from] - d).max(0.0);
                }
            }
        }
        // Progress: processor sharing on each node.
        for (k, j) in jobs.iter_mut().enumerate() {
            if !j.live || j.moving.is_some() {
                continue;
            }
            let spec = &sc.jobs[by_spec[k]];
            let s = &sc.nodes[j.at];
            let share = (s.cpus / demand[j.at].max(1e-9)).min(1.0);
            let slow = if j.at == j.home { 1.0 } else { 1.0 + io_share(spec) };
            let step = s.speed * share * dt / slow;
            let used = step.min(j.remaining);
            j.remaining -= used;
            work_done[j.at] += used;
            if j.remaining <= 1e-12 {
                j.live = false;
                j.done = Some(t + dt * (used / step.max(1e-12)));
                live_jobs -= 1;
            }
        }
        t += dt;
    }
    let (mut sum, mut last, mut thrash) = (0.0, first, 0);
    for (k, j) in jobs.iter().enumerate() {
        let spec = &sc.jobs[by_spec[k]];
        let end = j.done.unwrap_or(t);
        sum += (end - spec.arrival) / spec.work;
        last = last.max(end);
        if j.moves.windows(2).any(|w| w[1] - w[0] < 10.0 && w[0] - spec.arrival >= 10.0) {
            thrash += 1;
        }
    }
    let total: f64 = work_done.iter().sum();
    Outcome {
        avg_slowdown: sum / jobs.len().max(1) as f64,
        makespan: last - first,
        migrations,
        refused,
        restarts,
        thrashing: thrash,
        finished: jobs.iter().filter(|j| j.done.is_some()).count(),
        work_share: work_done.iter().map(|w| w / total.max(1e-9)).collect(),
        log,
    }
}

/// The best makespan the cluster's CPUs allow for a batch: all work over all
/// capacity, and never less than the longest job on the fastest core.
pub fn ideal_makespan(sc: &Scenario) -> f64 {
    let work: f64 = sc.jobs.iter().map(|j| j.work).sum();
    let cap: f64 = sc.nodes.iter().map(|n| n.cpus * n.speed).sum();
    let fastest = sc.nodes.iter().map(|n| n.speed).fold(0.0, f64::max);
    let longest = sc.jobs.iter().map(|j| j.work).fold(0.0, f64::max);
    (work / cap).max(longest / fastest)
}

fn nodes_with(speeds: &[f64], cpus: f64) -> Vec<SimNode> {
    speeds.iter().map(|&speed| SimNode { speed, cpus, mem_total: 16 << 30, join: 0.0, fail: None }).collect()
}

/// A batch started at once on node 1: `jobs` heavy-tailed CPU-bound jobs.
pub fn burst(speeds: &[f64], jobs: usize, seed: u64) -> Scenario {
    let mut rng = Rng::new(seed);
    let name = format!("{} nodes (speeds {}), {jobs} jobs at once on node 1", speeds.len(), speed_list(speeds));
    let jobs = (0..jobs)
        .map(|_| SimJob {
            arrival: 0.0,
            home: 0,
            work: rng.pareto(1.2, 5.0, 120.0),
            rss: (8 + rng.below(120) as u64) << 20,
            calls_per_cpu_s: 0.0,
        })
        .collect();
    Scenario { name, nodes: nodes_with(speeds, 1.0), jobs, seed, dt: 0.05, sample: 16 }
}

fn speed_list(speeds: &[f64]) -> String {
    speeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(",")
}

/// Shape of an arrivals scenario.
#[derive(Clone, Debug)]
pub struct Mix {
    pub nodes: usize,
    /// Offered load as a share of the cluster's capacity.
    pub load: f64,
    /// Seconds during which jobs arrive.
    pub duration: f64,
    /// Only this many nodes are homes (users' workstations); 0 means all.
    pub homes: usize,
    /// Share of jobs that are I/O-heavy (many calls home).
    pub io_share: f64,
    /// Share of nodes that join late, and that fail.
    pub joining: f64,
    pub failing: f64,
    pub seed: u64,
}

/// Jobs arriving over time (Poisson) with heavy-tailed lengths, on nodes of
/// mixed speed and core count, some joining late and some failing.
pub fn arrivals(m: &Mix) -> Scenario {
    let mut rng = Rng::new(m.seed);
    let mut nodes: Vec<SimNode> = (0..m.nodes)
        .map(|_| {
            let speed = [0.5, 1.0, 1.0, 1.5, 2.0][rng.below(5)];
            let cpus = [1.0, 2.0, 4.0][rng.below(3)];
            SimNode { speed, cpus, mem_total: 16 << 30, join: 0.0, fail: None }
        })
        .collect();
    // Nodes that join late or fail are never homes (a failed home takes its
    // own jobs with it, whatever the placement).
    let mut home_ids: Vec<usize> = vec![0];
    for (i, node) in nodes.iter_mut().enumerate().skip(1) {
        let r = rng.unit();
        if r < m.joining {
            node.join = rng.unit() * m.duration * 0.5;
        } else if r < m.joining + m.failing {
            node.fail = Some(m.duration * (0.2 + 0.6 * rng.unit()));
        } else if m.homes == 0 || home_ids.len() < m.homes {
            home_ids.push(i);
        }
    }
    let homes = home_ids.len();
    let cap: f64 = nodes.iter().map(|n| n.cpus * n.speed).sum();
    let (alpha, lo, hi): (f64, f64, f64) = (1.2, 2.0, 600.0);
    // Mean of the bounded Pareto.
    let mean = {
        let r = (lo / hi).powf(alpha);
        (lo.powf(alpha) / (1.0 - r)) * (alpha / (alpha - 1.0)) * (lo.powf(1.0 - alpha) - hi.powf(1.0 - alpha))
    };
    let rate = m.load * cap / mean;
    let mut jobs = Vec::new();
    let mut t = 0.0;
    loop {
        t += rng.exp(1.0 / rate);
        if t > m.duration {
            break;
        }
        let io = rng.unit() < m.io_share;
        jobs.push(SimJob {
            arrival: t,
            home: home_ids[rng.below(homes)],
            work: rng.pareto(alpha, lo, hi),
            rss: ((4 + rng.below(250)) as u64) << 20,
            calls_per_cpu_s: if io { 5_000.0 + 15_000.0 * rng.unit() } else { 20.0 * rng.unit() },
        });
    }
    let churn = if m.joining + m.failing > 0.0 { ", nodes join and fail" } else { "" };
    let homes_s = if m.homes == 0 { "any node".to_string() } else { format!("{homes} home nodes") };
    Scenario {
        name: format!("{} nodes, load {:.1}, arrivals from {homes_s}{churn}", m.nodes, m.load),
        nodes,
        jobs,
        seed: m.seed,
        dt: if m.nodes > 100 { 0.1 } else { 0.05 },
        sample: 16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pareto_is_bounded_and_heavy() {
        let mut r = Rng::new(1);
        let v: Vec<f64> = (0..10_000).map(|_| r.pareto(1.2, 2.0, 600.0)).collect();
        assert!(v.iter().all(|&x| (2.0..=600.0).contains(&x)));
        let big = v.iter().filter(|&&x| x > 100.0).count();
        assert!(big > 50 && big < 500, "{big}");
    }

    #[test]
    fn same_seed_same_outcome() {
        let sc = burst(&[1.0, 1.0, 1.0, 1.0], 16, 7);
        let p = Params::default();
        assert_eq!(run(&sc, Placement::Om, &p), run(&sc, Placement::Om, &p));
    }
}
