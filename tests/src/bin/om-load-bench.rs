//! om-load-bench: the load test at full size. 200 python3 processes under om
//! on node 1 are moved at once (16 `omctl migrate` in parallel) to node 2,
//! straight across to 3, then home, with guest limits reached; every process
//! must finish exactly. Prints how many moved, how many were refused, and how
//! long each round took. Needs root and the binaries:
//!     cargo build --release --workspace && target/release/om-load-bench [N]

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let r = om_tests::load::run(n, 3000);
    println!("| round | moved | refused | seconds | moves/s |");
    println!("| --- | --- | --- | --- | --- |");
    for (name, x) in &r.rounds {
        println!("| {name} | {} | {} | {:.1} | {:.1} |", x.moved, x.refused, x.secs, x.moved as f64 / x.secs);
    }
    println!("{} processes, all finished exactly", r.processes);
}
