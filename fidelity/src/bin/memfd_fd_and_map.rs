//! A memfd both mapped shared and open as an fd: a write through the
//! mapping shows through the fd, and one through the fd in the mapping.
//! The fd stays at home (with the deputy) while the memory moves: a call
//! on it takes the process home, where the memory goes back into the
//! object the fd holds.

const PAGE: usize = 4096;

fn main() {
    om_fidelity::case(
        || {
            // SAFETY: a memfd of ours, sized and mapped.
            unsafe {
                let fd = libc::memfd_create(c"om-both".as_ptr(), 0);
                libc::ftruncate(fd, PAGE as i64);
                let rw = libc::PROT_READ | libc::PROT_WRITE;
                let p = libc::mmap(std::ptr::null_mut(), PAGE, rw, libc::MAP_SHARED, fd, 0);
                (fd, p as usize)
            }
        },
        |(fd, p), seen| {
            // SAFETY: writes through the mapping and the fd, each read through the other.
            unsafe {
                let p = p as *mut u8;
                *p.add(7) = b'm';
                let mut b = [0u8; 1];
                libc::pread(fd, b.as_mut_ptr().cast(), 1, 7);
                seen.expect("a write to the mapping shows through the fd", b[0], b'm');
                libc::pwrite(fd, b"hi".as_ptr().cast(), 2, 100);
                seen.expect("a write through the fd shows", [*p.add(100), *p.add(101)], [b'h', b'i']);
            }
        },
    );
}
