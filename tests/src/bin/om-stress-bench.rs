//! om-stress-bench: the stress test at length. Real programs (python3, and
//! `churn`, which reads, writes and computes) are moved through random
//! sequences of moves at random moments; every output byte and exit status
//! is checked. Needs root and the binaries:
//!     cargo build --release --workspace && target/release/om-stress-bench [MOVES] [SECONDS]
//! Prints its seed; OM_STRESS_SEED=N replays one.

fn main() {
    let moves: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(2000);
    let secs: u64 = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(1200);
    let seed = om_tests::stress::seed();
    let r = om_tests::stress::run(seed, moves, std::time::Duration::from_secs(secs), 6, 1500);
    println!(
        "seed {}: {} programs, {} moves done and {} refused in {:.0} s ({:.1} moves/s); every byte and status exact",
        r.seed,
        r.programs,
        r.moves,
        r.refused,
        r.secs,
        r.moves as f64 / r.secs
    );
}
