//! Stress: python3 and a program that reads, writes and computes, moved
//! through random sequences of moves (out, straight across, home, again) at
//! random moments: several hundred moves, at most a few minutes. Every output
//! byte and exit status is checked. `OM_STRESS_SEED=N` replays a run.
//! (`om-stress-bench` runs a longer version.)

#[test]
fn random_moves_of_real_programs_keep_every_byte_and_status() {
    let seed = om_tests::stress::seed();
    let r = om_tests::stress::run(seed, 300, std::time::Duration::from_secs(150), 4, 600);
    eprintln!("{r:?}");
    assert!(r.moves >= 100, "seed {seed}: only {} moves succeeded: {r:?}", r.moves);
}
