//! Load: 50 python3 processes moved at once out, straight across and home by
//! 16 parallel `omctl migrate` calls, with guest limits reached on the way.
//! Every process finishes exactly; refusals are allowed, deaths are not.
//! (`om-load-bench` runs the same with 200.)

#[test]
fn fifty_processes_move_out_across_and_home_at_once() {
    let r = om_tests::load::run(50, 2500);
    eprintln!("{r:?}");
    assert!(r.rounds.iter().map(|(_, x)| x.moved).sum::<usize>() >= 50, "too few moves: {r:?}");
}
