//! The stress test, shared by `tests/tests/stress.rs` (bounded, in CI) and
//! `om-stress-bench` (longer): real programs (python3, and the `churn`
//! fixture that reads, writes and computes) are moved through random
//! sequences of moves (out, straight across, home, and again) at random
//! moments. Every output byte and every exit status is checked. The run
//! prints its seed; `OM_STRESS_SEED=N` replays one.

use crate::{bin, Cluster};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const PYTHON: &str = "import sys, time\nn = int(sys.argv[1])\nx = 1\nfor i in range(n):\n    x = (x * 6364136223846793005 + (i ^ 0x9e3779b9)) % 2**64\n    print(i, x, flush=True)\n    time.sleep(0.01)\n";

/// What a stress run did.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub programs: usize,
    pub moves: usize,
    pub refused: usize,
    pub secs: f64,
}

struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The lines both programs print: `i x` for the hash chain.
fn expected(n: usize) -> String {
    let mut x = 1u64;
    let mut s = String::new();
    for i in 0..n as u64 {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(i ^ 0x9e37_79b9);
        s.push_str(&format!("{i} {x}\n"));
    }
    s
}

/// The seed from `OM_STRESS_SEED`, or a fresh one.
pub fn seed() -> u64 {
    std::env::var("OM_STRESS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) | 1
    })
}

/// Run until `moves` moves were asked for or `budget` ran out, with
/// `parallel` programs at a time of `lines` lines each.
pub fn run(seed: u64, moves: usize, budget: Duration, parallel: usize, lines: usize) -> Report {
    eprintln!("stress seed {seed} (replay with OM_STRESS_SEED={seed})");
    let c = Cluster::start(3);
    let script = c.path("stress.py");
    std::fs::write(&script, PYTHON).expect("script");
    let python = crate::load::python();
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let t0 = Instant::now();
    let mut report = Report { seed, ..Report::default() };
    let mut running: Vec<(Child, String, Option<String>)> = Vec::new();
    let mut started = 0usize;
    let start = |k: usize, c: &Cluster| -> (Child, String, Option<String>) {
        let out = format!("s{k}.out");
        if k.is_multiple_of(2) {
            let file = c.path(&format!("s{k}.dat")).to_string_lossy().into_owned();
            (c.om_exec(1, &bin("churn"), &[&lines.to_string(), &file, "10"], &out), out, Some(file))
        } else {
            (c.om_exec(1, &python, &[script.to_str().expect("path"), &lines.to_string()], &out), out, None)
        }
    };
    let check = |child: &mut Child, out: &str, file: &Option<String>, c: &Cluster| {
        let st = crate::wait_child(child, Duration::from_secs(120));
        let text = std::fs::read_to_string(c.path(out)).unwrap_or_default();
        assert!(st.success(), "seed {seed}: {out} (pid {}) ended with {st:?}\n{}", child.id(), c.logs());
        assert!(text == expected(lines), "seed {seed}: {out} (pid {}) printed wrong output\n{}", child.id(), c.logs());
        if let Some(f) = file {
            assert_eq!(std::fs::read_to_string(f).unwrap_or_default(), expected(lines), "seed {seed}: {f}");
        }
    };
    while report.moves + report.refused < moves && t0.elapsed() < budget {
        while running.len() < parallel {
            running.push(start(started, &c));
            started += 1;
        }
        // Finished programs are checked and replaced.
        let mut i = 0;
        while i < running.len() {
            if running[i].0.try_wait().ok().flatten().is_some() {
                let (mut ch, out, file) = running.swap_remove(i);
                check(&mut ch, &out, &file, &c);
            } else {
                i += 1;
            }
        }
        if running.is_empty() {
            continue;
        }
        let k = rng.below(running.len() as u64) as usize;
        let pid = running[k].0.id();
        let now = c.where_is(1, pid);
        let choices: Vec<&str> = ["2", "3", "home"]
            .into_iter()
            .filter(|t| match now {
                Some(1) => *t != "home",
                Some(2) => *t != "2",
                Some(3) => *t != "3",
                _ => true,
            })
            .collect();
        let to = choices[rng.below(choices.len() as u64) as usize];
        let o =
            Command::new(bin("omctl")).env("OM_SOCKET", c.socket(1)).args(["migrate", &pid.to_string(), to]).output();
        match o {
            Ok(o) if o.status.success() => report.moves += 1,
            Ok(o) => {
                let e = String::from_utf8_lossy(&o.stderr);
                // A program that just ended, or one already moving, may refuse;
                // so may a move that fails as a transaction (the process stays).
                let alive = running[k].0.try_wait().ok().flatten().is_none();
                let kept = e.contains("keeps running") || e.contains("stays");
                assert!(
                    !alive
                        || kept
                        || e.contains("moving")
                        || e.contains("not under om")
                        || e.contains("exited")
                        || e.contains("ended on its way")
                        || e.contains("already"),
                    "seed {seed}: moving {pid} to {to} failed: {e}\n{}",
                    c.logs()
                );
                report.refused += 1;
            }
            Err(e) => panic!("omctl: {e}"),
        }
        std::thread::sleep(Duration::from_millis(rng.below(120)));
    }
    for (mut ch, out, file) in running.drain(..) {
        check(&mut ch, &out, &file, &c);
    }
    for id in 1..=3 {
        let pid = c.node_pid(id).expect("daemon");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "seed {seed}: omd of node {id} died\n{}",
            c.logs()
        );
    }
    report.programs = started;
    report.secs = t0.elapsed().as_secs_f64();
    report
}
