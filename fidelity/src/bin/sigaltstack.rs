//! The alternate signal stack set with sigaltstack stays set, and a
//! SA_ONSTACK handler runs on it.

use std::sync::atomic::{AtomicUsize, Ordering};

static SP: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_usr1(_: i32) {
    let here = 0u8;
    SP.store(&here as *const u8 as usize, Ordering::SeqCst);
}

const SIZE: usize = 64 * 1024;

fn main() {
    om_fidelity::case(
        || {
            let stack = vec![0u8; SIZE].leak().as_mut_ptr() as usize;
            // SAFETY: an alternate stack of our own (leaked, so it lives on) and a handler for it.
            unsafe {
                let ss = libc::stack_t { ss_sp: stack as *mut libc::c_void, ss_flags: 0, ss_size: SIZE };
                libc::sigaltstack(&ss, std::ptr::null_mut());
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_usr1 as *const () as usize;
                sa.sa_flags = libc::SA_ONSTACK;
                libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
            }
            stack
        },
        |stack, seen| {
            // SAFETY: reads the current alternate stack into our struct.
            let mut ss: libc::stack_t = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            unsafe { libc::sigaltstack(std::ptr::null(), &mut ss) };
            seen.expect("alternate stack", (ss.ss_sp as usize == stack, ss.ss_size, ss.ss_flags), (true, SIZE, 0));
            // SAFETY: a signal to ourselves, handled.
            unsafe { libc::raise(libc::SIGUSR1) };
            let sp = SP.load(Ordering::SeqCst);
            seen.expect("handler ran on it", sp > stack && sp < stack + SIZE, true);
        },
    );
}
