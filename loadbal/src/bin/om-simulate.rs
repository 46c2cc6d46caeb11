//! om-simulate: run the balancer's policy in the deterministic simulator and
//! print the average slowdown of each placement as a Markdown table.

use clap::Parser;
use om_loadbal::policy::Params;
use om_loadbal::simulate::{self, Mix, Placement, Scenario};

#[derive(Parser, Debug)]
#[command(name = "om-simulate", about = "compare om's balancer with static placements in a deterministic simulator")]
struct Args {
    /// Small cases only (seconds instead of minutes).
    #[arg(long)]
    quick: bool,
    /// Seed of every scenario.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn scenarios(quick: bool, seed: u64) -> Vec<Scenario> {
    let mix = |nodes, homes, load, joining, failing| {
        simulate::arrivals(&Mix { nodes, load, duration: 300.0, homes, io_share: 0.1, joining, failing, seed })
    };
    let mut v = vec![
        simulate::burst(&[1.0; 4], 16, seed),
        simulate::burst(&[2.0, 1.0, 1.0, 0.5], 16, seed),
        mix(4, 1, 0.6, 0.0, 0.0),
        mix(16, 2, 0.7, 0.0, 0.0),
        mix(16, 0, 0.7, 0.0, 0.0),
        mix(16, 0, 0.7, 0.1, 0.1),
    ];
    if !quick {
        v.push(mix(64, 8, 0.7, 0.1, 0.1));
        v.push(mix(256, 0, 0.8, 0.1, 0.05));
        v.push(mix(1000, 100, 0.7, 0.1, 0.05));
    }
    v
}

fn main() {
    let a = Args::parse();
    let p = Params::default();
    let all = [Placement::Om, Placement::RoundRobin, Placement::Home, Placement::Greedy];
    println!("Average slowdown (lower is better; 1 = every job alone on a reference core), seed {}.\n", a.seed);
    println!(
        "| scenario | jobs | om | round-robin | all at home | omniscient greedy | om vs round-robin | om vs home | om migrations per job | om makespan / ideal |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for sc in scenarios(a.quick, a.seed) {
        let started = std::time::Instant::now();
        let r: Vec<_> = all.iter().map(|&pl| simulate::run(&sc, pl, &p)).collect();
        let ideal = simulate::ideal_makespan(&sc);
        let burst = sc.jobs.iter().all(|j| j.arrival == 0.0);
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2}x | {:.2}x | {:.2} | {} |",
            sc.name,
            sc.jobs.len(),
            r[0].avg_slowdown,
            r[1].avg_slowdown,
            r[2].avg_slowdown,
            r[3].avg_slowdown,
            r[1].avg_slowdown / r[0].avg_slowdown,
            r[2].avg_slowdown / r[0].avg_slowdown,
            r[0].migrations as f64 / sc.jobs.len() as f64,
            if burst { format!("{:.2}", r[0].makespan / ideal) } else { "-".into() },
        );
        eprintln!(
            "  {}: {:.1} s; om: {} moves refused by hosts, {} jobs rerun after a node failed, {} jobs moved twice within 10 s",
            sc.name,
            started.elapsed().as_secs_f64(),
            r[0].refused,
            r[0].restarts,
            r[0].thrashing
        );
    }
}
