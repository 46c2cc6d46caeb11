//! fidelity: user nobody
//! Soft resource limits below their hard ones (stack 8 MiB, core 0, open
//! files 512) read the same after a move.

fn get(res: libc::__rlimit_resource_t) -> (u64, u64) {
    let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit fills our struct.
    unsafe { libc::getrlimit(res, &mut l) };
    (l.rlim_cur, l.rlim_max)
}

fn set_soft(res: libc::__rlimit_resource_t, v: u64) {
    let (_, max) = get(res);
    let l = libc::rlimit { rlim_cur: v, rlim_max: max };
    // SAFETY: setrlimit reads our struct.
    unsafe { libc::setrlimit(res, &l) };
}

fn main() {
    om_fidelity::case(
        || {
            set_soft(libc::RLIMIT_STACK, 8 << 20);
            set_soft(libc::RLIMIT_CORE, 0);
            set_soft(libc::RLIMIT_NOFILE, 512);
        },
        |_, seen| {
            seen.expect("stack", get(libc::RLIMIT_STACK).0, 8 << 20);
            seen.expect("core", get(libc::RLIMIT_CORE).0, 0);
            seen.expect("nofile", get(libc::RLIMIT_NOFILE).0, 512);
            seen.note("as", format!("{:?}", get(libc::RLIMIT_AS)));
        },
    );
}
