//! Shared memory that no other process uses any more moves: shared
//! anonymous memory (split in two regions by mprotect) and a memfd whose
//! fd is closed, each written by a child that has exited, keep every byte
//! (pages only the child touched too); and a child forked after the move
//! shares them again: its writes show in the parent.

const PAGE: usize = 4096;

fn map(fd: i32) -> *mut u8 {
    let flags = if fd < 0 { libc::MAP_SHARED | libc::MAP_ANONYMOUS } else { libc::MAP_SHARED };
    // SAFETY: a fresh shared mapping of three pages.
    unsafe { libc::mmap(std::ptr::null_mut(), 3 * PAGE, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0).cast() }
}

/// Run `f` in a child and wait for it.
fn in_child(f: impl FnOnce()) -> i32 {
    // SAFETY: the child only writes to memory and exits.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            f();
            libc::_exit(0);
        }
        let mut st = 0;
        libc::waitpid(pid, &mut st, 0);
        st
    }
}

fn main() {
    om_fidelity::case(
        || {
            let anon = map(-1);
            // SAFETY: a memfd of ours, sized, mapped, and closed.
            let mfd = unsafe {
                let fd = libc::memfd_create(c"om-sole".as_ptr(), 0);
                libc::ftruncate(fd, 3 * PAGE as i64);
                let m = map(fd);
                libc::close(fd);
                m
            };
            // SAFETY: the pages are ours; the child writes to the shared ones.
            unsafe {
                *anon = b'A';
                let st = in_child(|| {
                    *anon.add(PAGE) = b'B';
                    *mfd = b'M';
                    *mfd.add(2 * PAGE + 7) = b'Z';
                });
                assert_eq!(st, 0);
                // Two regions of one object.
                libc::mprotect(anon.add(2 * PAGE).cast(), PAGE, libc::PROT_READ);
            }
            (anon as usize, mfd as usize)
        },
        |(anon, mfd), seen| {
            let (anon, mfd) = (anon as *mut u8, mfd as *mut u8);
            // SAFETY: reads and writes of our own mappings, and a child.
            unsafe {
                seen.expect("anon pages", [*anon, *anon.add(PAGE), *anon.add(2 * PAGE)], [b'A', b'B', 0]);
                seen.expect("memfd pages", [*mfd, *mfd.add(PAGE), *mfd.add(2 * PAGE + 7)], [b'M', 0, b'Z']);
                let st = in_child(|| {
                    *anon = b'C';
                    *mfd.add(PAGE) = b'N';
                });
                seen.expect("child's status", st, 0);
                seen.expect("the child's writes show", [*anon, *mfd.add(PAGE)], [b'C', b'N']);
                let r = libc::mprotect(anon.add(2 * PAGE).cast(), PAGE, libc::PROT_READ | libc::PROT_WRITE);
                seen.expect("mprotect the second region writable", r, 0);
                *anon.add(2 * PAGE) = b'D';
                let st = in_child(|| *anon.add(2 * PAGE) += 1);
                seen.expect("child's status", st, 0);
                seen.expect("second region shared", *anon.add(2 * PAGE), b'E');
            }
        },
    );
}
