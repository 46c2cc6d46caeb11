//! The balancing policy in the deterministic simulator, on small fixed seeds:
//! bounds a user would check (how much sooner a batch ends, no thrashing).

use om_loadbal::policy::Params;
use om_loadbal::simulate::{self, Mix, Placement};

fn run_all(sc: &simulate::Scenario) -> [simulate::Outcome; 4] {
    let p = Params::default();
    [Placement::Om, Placement::RoundRobin, Placement::Home, Placement::Greedy].map(|pl| simulate::run(sc, pl, &p))
}

#[test]
fn burst_on_equal_nodes_ends_near_the_ideal() {
    for seed in [1, 2, 3] {
        let sc = simulate::burst(&[1.0; 4], 16, seed);
        let [om, rr, home, _] = run_all(&sc);
        let ideal = simulate::ideal_makespan(&sc);
        assert_eq!(om.finished, 16);
        assert!(
            om.makespan <= 1.25 * ideal,
            "seed {seed}: makespan {:.1} against ideal {ideal:.1}: {om:?}",
            om.makespan
        );
        assert!(om.avg_slowdown < 0.5 * home.avg_slowdown, "seed {seed}: {om:?} vs home {home:?}");
        assert!(om.avg_slowdown < 1.2 * rr.avg_slowdown, "seed {seed}: {om:?} vs round-robin {rr:?}");
    }
}

#[test]
fn faster_node_does_proportionally_more() {
    let sc = simulate::burst(&[2.0, 1.0, 1.0, 0.5], 16, 1);
    let [om, rr, _, _] = run_all(&sc);
    // Speed shares 2:1:1:0.5 of 4.5.
    let fast = om.work_share[0];
    let slow = om.work_share[3];
    assert!(fast > 0.35 && slow < 0.15, "work shares {:?}", om.work_share);
    assert!(om.makespan < 0.8 * rr.makespan, "om {om:?} vs round-robin {rr:?}");
}

#[test]
fn arrivals_from_one_workstation_beat_static_placement() {
    let sc = simulate::arrivals(&Mix {
        nodes: 8,
        load: 0.7,
        duration: 200.0,
        homes: 1,
        io_share: 0.1,
        joining: 0.0,
        failing: 0.0,
        seed: 5,
    });
    let [om, rr, home, greedy] = run_all(&sc);
    assert_eq!(om.finished, sc.jobs.len());
    assert!(om.avg_slowdown < 0.7 * rr.avg_slowdown, "om {om:?} vs round-robin {rr:?}");
    assert!(om.avg_slowdown < 0.3 * home.avg_slowdown, "om {om:?} vs home {home:?}");
    assert!(om.avg_slowdown < 2.5 * greedy.avg_slowdown, "om {om:?} vs greedy {greedy:?}");
}

#[test]
fn nodes_joining_and_failing_lose_no_job() {
    let sc = simulate::arrivals(&Mix {
        nodes: 16,
        load: 0.7,
        duration: 200.0,
        homes: 0,
        io_share: 0.1,
        joining: 0.15,
        failing: 0.15,
        seed: 9,
    });
    let late = sc.nodes.iter().filter(|n| n.join > 0.0).count();
    let failing = sc.nodes.iter().filter(|n| n.fail.is_some()).count();
    assert!(late > 0 && failing > 0, "the scenario must have churn: {late} late, {failing} failing");
    let [om, rr, home, _] = run_all(&sc);
    assert_eq!(om.finished, sc.jobs.len(), "every job ends, lost ones run again");
    assert!(om.restarts > 0, "some job was on a failing node: {om:?}");
    assert!(om.avg_slowdown < rr.avg_slowdown && om.avg_slowdown < home.avg_slowdown, "{om:?} {rr:?} {home:?}");
    // Late nodes do work.
    let idx: Vec<usize> = (0..sc.nodes.len()).filter(|&i| sc.nodes[i].join > 0.0).collect();
    assert!(idx.iter().any(|&i| om.work_share[i] > 0.0), "late nodes did nothing: {:?}", om.work_share);
}

#[test]
fn steady_load_does_not_thrash() {
    // Long equal jobs: after spreading, nothing moves again.
    let mut sc = simulate::burst(&[1.0; 4], 8, 1);
    for j in &mut sc.jobs {
        j.work = 120.0;
    }
    let [om, ..] = run_all(&sc);
    assert_eq!(om.thrashing, 0, "{om:?}");
    let early = om.log.iter().filter(|m| m.0 < 100.0).count();
    assert_eq!(early, 6, "two jobs per node, moved once each: {om:?}");
    assert!(om.work_share.iter().all(|&s| (s - 0.25).abs() < 0.03), "{:?}", om.work_share);
}
