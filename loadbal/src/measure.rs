//! What the balancer measures: the node's runnable demand, and each
//! process's CPU demand, calls and memory, from /proc.
//!
//! Demand is time running plus time waiting to run (`/proc/PID/schedstat`),
//! over wall time: 1.0 for a process that always wants a core, whatever share
//! it gets. Time throttled by a cgroup CPU quota counts as waiting.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use om_runtime::procfs;

/// I/O calls (read and write calls) and bytes moved by a process so far.
pub fn io(pid: i32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let field = |name: &str| {
        s.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim_start_matches(':').trim().parse::<u64>().ok()))
    };
    Some((field("syscr")? + field("syscw")?, field("rchar")? + field("wchar")?))
}

/// Memory of the node (total, free): the memory cgroup's limit and use when
/// one of `cgroups` sets one, else the machine's MemTotal and MemAvailable.
pub fn memory(cgroups: &[PathBuf]) -> (u64, u64) {
    let num = |p: PathBuf| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = |name: &str| {
        info.lines()
            .find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|v| v.trim_start_matches(':').split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |k| k * 1024)
    };
    let (total, avail) = (kb("MemTotal"), kb("MemAvailable"));
    for c in cgroups {
        let limit = num(c.join("memory.limit_in_bytes")).or_else(|| num(c.join("memory.max")));
        let used = num(c.join("memory.usage_in_bytes")).or_else(|| num(c.join("memory.current")));
        if let (Some(limit), Some(used)) = (limit, used) {
            if limit < total {
                return (limit, limit.saturating_sub(used).min(avail));
            }
        }
    }
    (total, avail)
}

/// A process's counters at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Counters {
    pub at: Instant,
    /// Run plus run-queue wait, ns.
    pub cpu_ns: u64,
    /// Run only, ns.
    pub run_ns: u64,
    pub calls: u64,
    pub bytes: u64,
    /// Counted away (from the host and the deputy) or at home (from /proc).
    pub away: bool,
}

/// Rates between two readings of the same kind: (demand, calls per second
/// of CPU, bytes per second of CPU).
pub fn rates(old: &Counters, new: &Counters) -> Option<(f64, f64, f64)> {
    let dt = new.at.duration_since(old.at).as_secs_f64();
    if old.away != new.away || dt < 0.2 || new.cpu_ns < old.cpu_ns || new.run_ns < old.run_ns {
        return None;
    }
    let demand = (new.cpu_ns - old.cpu_ns) as f64 / 1e9 / dt;
    // At least a millisecond of CPU, so a sleeping process's few calls do
    // not count as thousands per CPU-second.
    let run = ((new.run_ns - old.run_ns) as f64 / 1e9).max(1e-3);
    let calls = new.calls.saturating_sub(old.calls) as f64 / run;
    let bytes = new.bytes.saturating_sub(old.bytes) as f64 / run;
    Some((demand, calls, bytes))
}

/// Counters of a process running here.
pub fn home_counters(pid: i32) -> Option<Counters> {
    let (run_ns, wait_ns) = procfs::process_schedstat(pid)?;
    let (calls, bytes) = io(pid).unwrap_or((0, 0));
    Some(Counters { at: Instant::now(), cpu_ns: run_ns + wait_ns, run_ns, calls, bytes, away: false })
}

/// The node's runnable demand, sampled often and smoothed.
pub struct NodeDemand {
    /// The task list of the node's CPU cgroup, if it has one.
    tasks: Option<PathBuf>,
    last: HashMap<i32, u64>,
    at: Instant,
    /// The last few instant readings; the demand is their mean.
    window: std::collections::VecDeque<f64>,
}

impl NodeDemand {
    /// Measure the tasks of the first of `cgroups` that lists them, else the
    /// whole machine.
    pub fn new(cgroups: &[PathBuf]) -> NodeDemand {
        let tasks =
            cgroups.iter().flat_map(|c| [c.join("tasks"), c.join("cgroup.threads")]).find(|p| Path::new(p).exists());
        NodeDemand { tasks, last: HashMap::new(), at: Instant::now(), window: Default::default() }
    }

    /// Take a sample (every 250 ms); returns the demand over the last
    /// second (cores' worth of work).
    pub fn sample(&mut self) -> f64 {
        let now = Instant::now();
        let dt = now.duration_since(self.at).as_secs_f64().max(1e-3);
        self.at = now;
        let inst = match &self.tasks {
            Some(list) => {
                let text = std::fs::read_to_string(list).unwrap_or_default();
                let mut next = HashMap::new();
                let mut sum = 0u64;
                for tid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if let Some(v) = procfs::schedstat(tid).map(|(run, wait)| run + wait) {
                        // A task new in the list (a guest that just arrived):
                        // what it used since it started, at most this interval.
                        let old = self.last.get(&tid).copied().unwrap_or_else(|| v.saturating_sub((dt * 1e9) as u64));
                        sum += v.saturating_sub(old);
                        next.insert(tid, v);
                    }
                }
                self.last = next;
                sum as f64 / 1e9 / dt
            }
            None => {
                // Tasks running or runnable now, less this sampler.
                let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
                let running = stat
                    .lines()
                    .find_map(|l| l.strip_prefix("procs_running").and_then(|v| v.trim().parse::<f64>().ok()))
                    .unwrap_or(1.0);
                (running - 1.0).max(0.0)
            }
        };
        self.window.push_back(inst);
        if self.window.len() > 4 {
            self.window.pop_front();
        }
        self.window.iter().sum::<f64>() / self.window.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_need_two_readings_of_the_same_kind() {
        let t = Instant::now();
        let a = Counters { at: t, cpu_ns: 0, run_ns: 0, calls: 0, bytes: 0, away: false };
        let b = Counters {
            at: t + std::time::Duration::from_secs(2),
            cpu_ns: 1_000_000_000,
            run_ns: 500_000_000,
            calls: 40,
            bytes: 4096,
            away: false,
        };
        // Half a core wanted; 40 calls in half a CPU-second.
        assert_eq!(rates(&a, &b), Some((0.5, 80.0, 8192.0)));
        assert_eq!(rates(&a, &Counters { away: true, ..b }), None);
        assert_eq!(rates(&b, &Counters { at: b.at + std::time::Duration::from_secs(1), cpu_ns: 5, ..b }), None);
    }

    #[test]
    fn a_spinning_thread_wants_one_core() {
        let read = || Counters {
            at: Instant::now(),
            cpu_ns: procfs::schedstat(om_runtime::sys::gettid()).map(|(r, w)| r + w).expect("own schedstat"),
            run_ns: 0,
            calls: 0,
            bytes: 0,
            away: false,
        };
        let a = read();
        while a.at.elapsed().as_millis() < 300 {
            std::hint::black_box(0u64);
        }
        let (d, _, _) = rates(&a, &read()).expect("rates");
        assert!(d > 0.5 && d < 1.6, "demand {d}");
    }
}
