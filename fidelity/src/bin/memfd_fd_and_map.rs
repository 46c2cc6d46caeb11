//! fidelity: refused
//! A memfd both mapped shared and open as an fd: a write through the fd
//! shows in the mapping. The fd stays at home while memory moves, so om
//! refuses to move it (naming the fd).

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
            // SAFETY: a write through the fd, read through the mapping.
            unsafe {
                libc::pwrite(fd, b"hi".as_ptr().cast(), 2, 100);
                let p = p as *const u8;
                seen.expect("write through the fd shows", [*p.add(100), *p.add(101)], [b'h', b'i']);
            }
        },
    );
}
