//! Fuzz the forwarding of calls against the real kernel: the same seeded
//! sequence of thousands of calls (getsockopt/setsockopt across levels and
//! options, ioctl, fcntl, recvmsg with random control buffers, read/write/
//! pread/pwrite with odd lengths; buffers valid, NULL, unmapped, read-only,
//! inaccessible or too short) runs natively and away from home. Every result
//! and every byte of memory after each call must be equal, every daemon must
//! survive, and the process must exit normally.
//!
//! `OM_FUZZ_SEED=N` replays a seed.

use om_tests::{bin, wait_child, wait_lines, Cluster};
use std::time::Duration;

const T: Duration = Duration::from_secs(120);
const BATCHES: u32 = 40;
const PER: u32 = 50;

/// Run the fixture; `away`: before each batch, move it to node 2 if it is not there.
fn run(c: &Cluster, seed: u64, away: bool) -> (Vec<String>, u32) {
    let tag = if away { "away" } else { "native" };
    let out = c.path(&format!("{tag}.out"));
    let data = c.path(&format!("{tag}.dat"));
    let (s, b, p) = (seed.to_string(), BATCHES.to_string(), PER.to_string());
    let mut child = c.om_exec(1, &bin("callfuzz"), &[&s, &b, &p, data.to_str().expect("path")], &format!("{tag}.out"));
    let pid = child.id();
    let mut moves = 0;
    for batch in 0..BATCHES {
        let t0 = std::time::Instant::now();
        while !std::fs::read_to_string(&out).unwrap_or_default().lines().any(|l| l == format!("wait {batch}")) {
            assert!(t0.elapsed() < T, "no 'wait {batch}' from callfuzz (seed {seed}, {tag})\n{}", c.logs());
            if let Ok(Some(st)) = child.try_wait() {
                let err = std::fs::read_to_string(c.path(&format!("{tag}.out.err"))).unwrap_or_default();
                panic!("callfuzz ({tag}, seed {seed}) ended early with {st:?}: {err}\n{}", c.logs());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if away && c.where_is(1, pid) != Some(2) {
            let mut last = String::new();
            let moved = (0..50).any(|_| match c.migrate(1, pid, "2") {
                Ok(()) => true,
                Err(e) => {
                    last = e;
                    std::thread::sleep(Duration::from_millis(100));
                    false
                }
            });
            assert!(moved, "cannot move callfuzz to node 2 (seed {seed}): {last}\n{}", c.logs());
            moves += 1;
        }
        // SAFETY: signalling the process under test.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGUSR1) }, 0);
    }
    let st = wait_child(&mut child, T);
    let lines = wait_lines(&out, 1, T);
    assert!(st.success(), "callfuzz ({tag}, seed {seed}) ended with {st:?}\n{}\n{}", lines.join("\n"), c.logs());
    (lines.into_iter().filter(|l| !l.starts_with("wait ")).collect(), moves)
}

#[test]
fn forwarded_calls_with_random_arguments_answer_as_natively() {
    let seed: u64 = std::env::var("OM_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20261130);
    eprintln!("callfuzz seed {seed} (replay with OM_FUZZ_SEED={seed})");
    let c = Cluster::start(2);
    let daemons: Vec<u32> = (1..=2).map(|id| c.node_pid(id).expect("daemon pid")).collect();
    let (native, _) = run(&c, seed, false);
    let (away, moves) = run(&c, seed, true);
    assert_eq!(native.last().map(String::as_str), Some("done"));
    assert_eq!(native.len(), (BATCHES * PER + 1) as usize);
    for (n, a) in native.iter().zip(&away) {
        assert_eq!(a, n, "seed {seed}: away (left) differs from native (right)\n{}", c.logs());
    }
    assert_eq!(away.len(), native.len());
    for (id, pid) in daemons.iter().enumerate() {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "omd of node {} died\n{}", id + 1, c.logs());
    }
    // Every batch starts away (calls that cannot be sized exactly go home, and
    // the next batch moves it out again).
    assert!(moves >= 1, "callfuzz never ran away from home\n{}", c.logs());
    eprintln!("{} calls compared, {moves} moves to node 2", native.len() - 1);
}
