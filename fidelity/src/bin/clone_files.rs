//! fidelity: refused
//! A child made with clone(CLONE_FILES) shares the fd table: an fd the
//! parent makes with dup2 after the child started works in the child. om
//! cannot keep a table shared across nodes, so it refuses to move either.

use std::sync::atomic::{AtomicBool, Ordering};

static GO: AtomicBool = AtomicBool::new(false);
static mut STACK: [u8; 64 * 1024] = [0; 64 * 1024];

extern "C" fn on_usr1(_: i32) {
    GO.store(true, Ordering::SeqCst);
}

extern "C" fn child(_: *mut libc::c_void) -> i32 {
    while !GO.load(Ordering::SeqCst) {
        // SAFETY: a plain pause; the signal wakes it.
        unsafe { libc::usleep(1000) };
    }
    // SAFETY: writes one byte to the fd the parent made after the clone.
    let n = unsafe { libc::write(100, b"x".as_ptr().cast(), 1) };
    if n == 1 {
        0
    } else {
        1
    }
}

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: a handler of our own, a pipe, and a child on a static stack
            // of its own (it only touches atomics and makes raw calls).
            unsafe {
                libc::signal(libc::SIGUSR1, on_usr1 as *const () as usize);
                let mut p = [0i32; 2];
                libc::pipe(p.as_mut_ptr());
                let top = (&raw mut STACK).cast::<u8>().add(64 * 1024 - 64);
                let pid = libc::clone(child, top.cast(), libc::CLONE_FILES | libc::SIGCHLD, std::ptr::null_mut());
                (pid, p)
            }
        },
        |(pid, p), seen| {
            // SAFETY: an fd of ours at 100, then wake the child and read what it wrote.
            unsafe {
                libc::dup2(p[1], 100);
                libc::kill(pid, libc::SIGUSR1);
                let mut b = [0u8; 1];
                let n = libc::read(p[0], b.as_mut_ptr().cast(), 1);
                seen.expect("child wrote through the new fd", (n, b[0]), (1, b'x'));
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
                seen.expect("child's status", st, 0);
            }
        },
    );
}
