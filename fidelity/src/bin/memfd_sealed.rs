//! memfd seals move: a memfd sealed against writes (F_SEAL_WRITE, mapped
//! read-only after sealing) keeps its bytes and cannot be made writable;
//! one sealed against future writes (F_SEAL_FUTURE_WRITE) keeps its
//! writable mapping from before the seal.

const PAGE: usize = 4096;

fn byte(i: usize) -> u8 {
    (i * 7 % 251) as u8
}

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: two memfds of ours, written, sealed, mapped and closed.
            unsafe {
                let fd = libc::memfd_create(c"om-sealed".as_ptr(), libc::MFD_ALLOW_SEALING);
                let data: Vec<u8> = (0..2 * PAGE).map(byte).collect();
                libc::write(fd, data.as_ptr().cast(), data.len());
                let seals = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
                assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, seals), 0);
                let p = libc::mmap(std::ptr::null_mut(), 2 * PAGE, libc::PROT_READ, libc::MAP_SHARED, fd, 0);
                assert_ne!(p, libc::MAP_FAILED);
                libc::close(fd);
                let fd = libc::memfd_create(c"om-future".as_ptr(), libc::MFD_ALLOW_SEALING);
                libc::ftruncate(fd, PAGE as i64);
                let rw = libc::PROT_READ | libc::PROT_WRITE;
                let q = libc::mmap(std::ptr::null_mut(), PAGE, rw, libc::MAP_SHARED, fd, 0);
                assert_eq!(libc::fcntl(fd, libc::F_ADD_SEALS, libc::F_SEAL_FUTURE_WRITE), 0);
                libc::close(fd);
                *(q as *mut u8) = b'x';
                (p as usize, q as usize)
            }
        },
        |(p, q), seen| {
            let (p, q) = (p as *mut u8, q as *mut u8);
            // SAFETY: reads of our mappings, a write to the writable one, mprotect.
            unsafe {
                let same = (0..2 * PAGE).all(|i| *p.add(i) == byte(i));
                seen.expect("sealed bytes", same, true);
                let r = libc::mprotect(p.cast(), 2 * PAGE, libc::PROT_READ | libc::PROT_WRITE);
                let e = *libc::__errno_location();
                seen.expect("mprotect writable", (r, if r < 0 { e } else { 0 }), (-1, libc::EACCES));
                seen.expect("future-sealed byte", *q, b'x');
                *q.add(1) = b'y';
                seen.expect("written through the old mapping", *q.add(1), b'y');
            }
        },
    );
}
