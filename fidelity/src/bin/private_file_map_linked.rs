//! A private mapping of a file keeps showing the file's later changes
//! (written through an fd) in the pages it has not written, as natively.

fn main() {
    om_fidelity::case(
        || {
            use std::os::fd::IntoRawFd;
            let p = std::env::temp_dir().join(format!("om-fid-pmapl-{}", std::process::id()));
            std::fs::write(&p, vec![b'a'; 3 * 4096]).expect("write");
            let fd = std::fs::OpenOptions::new().read(true).write(true).open(&p).expect("open").into_raw_fd();
            // SAFETY: a private mapping of our own file.
            let m = unsafe {
                libc::mmap(std::ptr::null_mut(), 3 * 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE, fd, 0)
            } as *mut u8;
            // SAFETY: page 0 is ours to write (copy on write).
            unsafe { *m = b'w' };
            (fd, m as usize, p)
        },
        |(fd, m, p), seen| {
            let m = m as *const u8;
            // SAFETY: write through the fd to pages 1 and 2 of the file.
            unsafe {
                libc::pwrite(fd, b"B".as_ptr().cast(), 1, 4096);
                libc::pwrite(fd, b"C".as_ptr().cast(), 1, 2 * 4096);
            }
            // SAFETY: reading our own mapping.
            let (p0, p1, p2) = unsafe { (*m, *m.add(4096), *m.add(2 * 4096)) };
            seen.expect("page 0 (written)", p0 as char, 'w');
            seen.expect("page 1 (from the file)", p1 as char, 'B');
            seen.expect("page 2 (from the file)", p2 as char, 'C');
            let _ = std::fs::remove_file(p);
        },
    );
}
