//! SysV shared memory held by this process alone moves: a keyed segment
//! and a private one marked for removal keep their bytes; the key still
//! finds the same id, IPC_STAT answers as at home, a child forked later
//! shares the segment, and the removed one goes when it is detached.

const PAGE: usize = 4096;

fn attach(key: i32, mark_removed: bool) -> (i32, *mut u8) {
    // SAFETY: a segment of our own, attached once.
    unsafe {
        let id = libc::shmget(key, 3 * PAGE, libc::IPC_CREAT | 0o600);
        assert!(id >= 0, "shmget");
        let p = libc::shmat(id, std::ptr::null(), 0);
        assert_ne!(p as isize, -1, "shmat");
        if mark_removed {
            libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
        }
        (id, p.cast())
    }
}

fn stat(id: i32) -> (i32, u64, usize) {
    // SAFETY: shmid_ds is plain data.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: ds is a valid out pointer.
    let r = unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) };
    let e = if r < 0 { std::io::Error::last_os_error().raw_os_error().unwrap_or(0) } else { 0 };
    (e, ds.shm_nattch, ds.shm_segsz)
}

fn main() {
    // SAFETY: getpid has no preconditions.
    let key = 0x4f4d_0000 | (unsafe { libc::getpid() } & 0xffff);
    om_fidelity::case(
        || {
            let (id, p) = attach(key, false);
            let (qid, q) = attach(libc::IPC_PRIVATE, true);
            // SAFETY: within the segments.
            unsafe {
                *p = b'S';
                *p.add(2 * PAGE) = b'T';
                *q.add(PAGE + 3) = b'Q';
            }
            (id, p as usize, qid, q as usize)
        },
        |(id, p, qid, q), seen| {
            let (p, q) = (p as *mut u8, q as *mut u8);
            // SAFETY: within the segments, then SysV calls and a child.
            unsafe {
                seen.expect("keyed bytes", [*p, *p.add(PAGE), *p.add(2 * PAGE)], [b'S', 0, b'T']);
                seen.expect("removed segment's byte", *q.add(PAGE + 3), b'Q');
                *p.add(PAGE) = b'U';
                seen.expect("the key finds the same id", libc::shmget(key, 0, 0) == id, true);
                seen.expect("IPC_STAT", stat(id), (0, 1, 3 * PAGE));
                let pid = libc::fork();
                if pid == 0 {
                    *p = b'V';
                    libc::_exit(0);
                }
                let mut st = 0;
                libc::waitpid(pid, &mut st, 0);
                seen.expect("child's write shows", (*p, *p.add(PAGE)), (b'V', b'U'));
                seen.expect("detach", libc::shmdt(p.cast()), 0);
                seen.expect("nattch once detached", stat(id).1, 0);
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
                seen.expect("detach the removed one", libc::shmdt(q.cast()), 0);
                seen.expect("it is gone", stat(qid).0, libc::EINVAL);
            }
        },
    );
}
