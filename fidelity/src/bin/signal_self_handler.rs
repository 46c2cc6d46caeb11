//! A signal the process sends itself (kill, then tgkill) reaches its
//! SA_SIGINFO handler before the call returns, with the process's own pid
//! and uid as the sender and the si_code of the call used.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};

static PID: AtomicI32 = AtomicI32::new(0);
static CODE: AtomicI32 = AtomicI32::new(99);
static UID: AtomicU32 = AtomicU32::new(0);
static COUNT: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_usr1(_: i32, si: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
    unsafe {
        PID.store((*si).si_pid(), Ordering::SeqCst);
        UID.store((*si).si_uid(), Ordering::SeqCst);
        CODE.store((*si).si_code, Ordering::SeqCst);
    }
    COUNT.fetch_add(1, Ordering::SeqCst);
}

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: installing a handler of our own.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_usr1 as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO;
                libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
            }
        },
        |_, seen| {
            let me = std::process::id() as i32;
            // SAFETY: getuid reads our uid.
            let uid = unsafe { libc::getuid() };
            // SAFETY: a signal to ourselves (handled).
            unsafe { libc::kill(me, libc::SIGUSR1) };
            seen.expect("kill: handled before it returned", COUNT.load(Ordering::SeqCst), 1);
            seen.expect("kill: from ourselves", PID.load(Ordering::SeqCst) == me, true);
            seen.expect("kill: our uid", UID.load(Ordering::SeqCst) == uid, true);
            seen.expect("kill: si_code", CODE.load(Ordering::SeqCst), libc::SI_USER);
            // SAFETY: tgkill to our own (only) thread.
            unsafe { libc::syscall(libc::SYS_tgkill, me, libc::gettid(), libc::SIGUSR1) };
            seen.expect("tgkill: handled before it returned", COUNT.load(Ordering::SeqCst), 2);
            seen.expect("tgkill: from ourselves", PID.load(Ordering::SeqCst) == me, true);
            seen.expect("tgkill: si_code", CODE.load(Ordering::SeqCst), libc::SI_TKILL);
        },
    );
}
