//! A thread waiting in sigwaitinfo while it moves waits on: the freeze
//! (a ptrace stop, which the kernel lets cut such a wait short) does not
//! show as EINTR, and the signal it waits for then arrives.

fn main() {
    om_fidelity::case(
        || (),
        |(), seen| {
            let early = om_fidelity::GO_WAIT_INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst);
            seen.expect("waits for the go signal cut short", early, 0);
        },
    );
}
