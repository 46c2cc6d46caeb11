//! membarrier registrations (private expedited, and its sync-core form)
//! hold after a move: the expedited commands work rather than EPERM.

const QUERY: i64 = 0;
const PRIVATE_EXPEDITED: i64 = 1 << 3;
const REGISTER_PRIVATE_EXPEDITED: i64 = 1 << 4;
const PRIVATE_EXPEDITED_SYNC_CORE: i64 = 1 << 5;
const REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: i64 = 1 << 6;

fn mb(cmd: i64) -> i64 {
    // SAFETY: membarrier takes no pointers.
    om_fidelity::ret(unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0, 0) })
}

fn main() {
    om_fidelity::case(
        || {
            let q = mb(QUERY);
            (mb(REGISTER_PRIVATE_EXPEDITED), mb(REGISTER_PRIVATE_EXPEDITED_SYNC_CORE), q)
        },
        |(a, b, q), seen| {
            seen.note("supported", q);
            seen.expect("register", a, 0);
            seen.expect("expedited", mb(PRIVATE_EXPEDITED), 0);
            seen.note("register sync-core", b);
            seen.note("expedited sync-core", mb(PRIVATE_EXPEDITED_SYNC_CORE));
        },
    );
}
