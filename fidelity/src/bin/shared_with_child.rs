//! Shared anonymous memory that a live child maps too: the child sees the
//! parent's writes and the parent the child's. Both are under om (the
//! child was adopted at its fork), so they move together, as a gang.

const PAGE: usize = 4096;

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: a shared page, and a child that waits on it and answers.
            unsafe {
                let flags = libc::MAP_SHARED | libc::MAP_ANONYMOUS;
                let p = libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0);
                let w = p as *mut u32;
                let pid = libc::fork();
                if pid == 0 {
                    while std::ptr::read_volatile(w) != 1 {
                        libc::usleep(1000);
                    }
                    std::ptr::write_volatile(w.add(1), 42);
                    libc::_exit(0);
                }
                (pid, p as usize)
            }
        },
        |(pid, p), seen| {
            let w = p as *mut u32;
            // SAFETY: the shared page, then the child's status.
            unsafe {
                std::ptr::write_volatile(w, 1);
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
                seen.expect("child's status", st, 0);
                seen.expect("child's answer", std::ptr::read_volatile(w.add(1)), 42);
            }
        },
    );
}
