//! The load test, shared by `tests/tests/load.rs` (50 processes, in CI) and
//! the `om-load-bench` binary (200): many python3 processes under om on
//! node 1 are moved at once, by 16 `omctl migrate` calls in parallel, to node
//! 2, then straight across to 3, then home, with guest limits reached on the
//! way. Refusals are allowed; a process that dies or prints a wrong line is not.

use crate::{bin, wait_child, Cluster};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one round of moves did.
#[derive(Debug, Default)]
pub struct Round {
    pub moved: usize,
    pub refused: usize,
    pub secs: f64,
}

/// What the whole test saw.
#[derive(Debug)]
pub struct Report {
    pub processes: usize,
    pub rounds: Vec<(String, Round)>,
}

const PROGRAM: &str =
    "import sys, time\nn = int(sys.argv[1])\nfor i in range(n):\n    print(i, flush=True)\n    time.sleep(0.02)\n";

/// Is this refusal one the load test allows (the guest limit, a node busy
/// with other moves)? Anything else is a failure.
fn allowed_refusal(e: &str) -> bool {
    e.contains("guest limit") || e.contains("refused") || e.contains("already moving") || e.contains("is moving")
}

/// Run the load test with `n` processes; panics with the logs on any death,
/// wrong output or unexpected error.
pub fn run(n: usize, lines: usize) -> Report {
    let guests = (n * 4 / 5).max(1).to_string();
    let c = Cluster::start_with(3, |id| if id == 1 { vec![] } else { vec![format!("--max-guests={guests}")] });
    let script = c.path("lines.py");
    std::fs::write(&script, PROGRAM).expect("script");
    let python = python();
    let mut kids = Vec::new();
    for i in 0..n {
        let out = format!("p{i}.out");
        kids.push(c.om_exec(1, &python, &[script.to_str().expect("path"), &lines.to_string()], &out));
    }
    for i in 0..n {
        crate::wait_lines(&c.path(&format!("p{i}.out")), 1, Duration::from_secs(120));
    }
    let pids: Vec<u32> = kids.iter().map(|k| k.id()).collect();
    let mut rounds = Vec::new();
    for (name, from, to) in
        [("out to node 2", Some(1), "2"), ("straight across to 3", Some(2), "3"), ("home", None, "home")]
    {
        let here: Vec<u32> = match from {
            Some(node) => pids.iter().copied().filter(|&p| c.where_is(1, p) == Some(node)).collect(),
            None => pids.iter().copied().filter(|&p| c.where_is(1, p).is_some_and(|w| w != 1)).collect(),
        };
        let r = move_all(&c, &here, to);
        rounds.push((name.to_string(), r));
    }
    // Everything must be home now, and finish exactly.
    for &p in &pids {
        if let Some(w) = c.where_is(1, p) {
            assert_eq!(w, 1, "process {p} is still on node {w} after the move home\n{}", c.logs());
        }
    }
    for (i, k) in kids.iter_mut().enumerate() {
        let st = wait_child(k, Duration::from_secs(300));
        let text = std::fs::read_to_string(c.path(&format!("p{i}.out"))).unwrap_or_default();
        assert!(
            st.success(),
            "process {} ended with {st:?} after {} lines\n{}",
            k.id(),
            text.lines().count(),
            c.logs()
        );
        let got: Vec<&str> = text.lines().collect();
        assert_eq!(got.len(), lines, "process {}: {} lines, not {lines}", k.id(), got.len());
        for (j, l) in got.iter().enumerate() {
            assert_eq!(*l, j.to_string(), "process {}: line {j} is {l:?}", k.id());
        }
    }
    for id in 1..=3 {
        let pid = c.node_pid(id).expect("daemon");
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "omd of node {id} died\n{}", c.logs());
    }
    Report { processes: n, rounds }
}

/// Move every pid to `to`, 16 `omctl migrate` at a time.
fn move_all(c: &Cluster, pids: &[u32], to: &str) -> Round {
    let t0 = Instant::now();
    let queue = Mutex::new(pids.to_vec());
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..16 {
            s.spawn(|| loop {
                let Some(p) = queue.lock().expect("queue").pop() else { return };
                let o = Command::new(bin("omctl"))
                    .env("OM_SOCKET", c.socket(1))
                    .args(["migrate", &p.to_string(), to])
                    .output()
                    .expect("omctl");
                let r = if o.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&o.stderr).into_owned()) };
                results.lock().expect("results").push((p, r));
            });
        }
    });
    let mut round = Round { secs: t0.elapsed().as_secs_f64(), ..Round::default() };
    for (p, r) in results.into_inner().expect("results") {
        match r {
            Ok(()) => round.moved += 1,
            Err(e) if allowed_refusal(&e) => round.refused += 1,
            Err(e) => panic!("moving process {p} to {to} failed: {e}\n{}", c.logs()),
        }
    }
    round
}

/// The real python3 interpreter (not a shim script that execs it).
pub fn python() -> std::path::PathBuf {
    let o = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap_or_else(|e| panic!("python3 is needed for the load test (scripts/setup.sh installs it): {e}"));
    let p = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(o.status.success() && !p.is_empty(), "python3 does not run: {}", String::from_utf8_lossy(&o.stderr));
    p.into()
}
