//! Per-process and per-thread state kept by prctl reads back as it was set:
//! THP disable, child subreaper, dumpable, parent-death signal, name, timer
//! slack, MCE kill policy, no_new_privs, keepcaps and securebits.

fn get(op: i32) -> i64 {
    // SAFETY: a prctl read with no pointers.
    om_fidelity::ret(unsafe { libc::prctl(op, 0, 0, 0, 0) } as i64)
}

fn get_into(op: i32) -> (i64, i64) {
    let mut v: libc::c_int = -7;
    // SAFETY: the kernel writes one int into `v`.
    let r = unsafe { libc::prctl(op, &mut v as *mut libc::c_int, 0, 0, 0) } as i64;
    (om_fidelity::ret(r), v as i64)
}

fn name() -> String {
    let mut b = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes.
    unsafe { libc::prctl(libc::PR_GET_NAME, b.as_mut_ptr(), 0, 0, 0) };
    String::from_utf8_lossy(&b).trim_end_matches('\0').to_string()
}

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: prctl settings of our own process, no pointers but the name.
            unsafe {
                libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
                libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGUSR1, 0, 0, 0);
                libc::prctl(libc::PR_SET_NAME, c"fid-prctl".as_ptr(), 0, 0, 0);
                libc::prctl(libc::PR_SET_TIMERSLACK, 123_456, 0, 0, 0);
                libc::prctl(libc::PR_MCE_KILL, libc::PR_MCE_KILL_SET, libc::PR_MCE_KILL_EARLY, 0, 0);
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0);
            }
        },
        |_, seen| {
            seen.expect("thp_disable", get(libc::PR_GET_THP_DISABLE), 1);
            seen.expect("child_subreaper", get_into(libc::PR_GET_CHILD_SUBREAPER), (0, 1));
            seen.expect("dumpable", get(libc::PR_GET_DUMPABLE), 1);
            seen.expect("pdeathsig", get_into(libc::PR_GET_PDEATHSIG), (0, libc::SIGUSR1 as i64));
            seen.expect("name", name(), "fid-prctl".to_string());
            seen.expect("timerslack", get(libc::PR_GET_TIMERSLACK), 123_456);
            seen.expect("mce_kill", get(libc::PR_MCE_KILL_GET), libc::PR_MCE_KILL_EARLY as i64);
            seen.expect("no_new_privs", get(libc::PR_GET_NO_NEW_PRIVS), 0);
            seen.expect("keepcaps", get(libc::PR_GET_KEEPCAPS), 1);
            seen.note("securebits", get(libc::PR_GET_SECUREBITS));
            seen.note("tsc", get_into(libc::PR_GET_TSC).1);
            seen.note("io_flusher", get(58));
            // SAFETY: a prctl read with no pointers.
            let ssb = unsafe { libc::prctl(libc::PR_GET_SPECULATION_CTRL, libc::PR_SPEC_STORE_BYPASS, 0, 0, 0) };
            seen.note("speculation_ssb", ssb);
        },
    );
}
