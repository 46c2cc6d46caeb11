//! Streams read in small pieces arrive whole, in order and once: a child
//! writes 1 MiB of a pattern (in pieces of odd sizes) into a socketpair and
//! into a pipe; we read each with read, recv and readv of odd sizes mixed,
//! check every byte, then read the end of the stream (EOF).

const TOTAL: usize = 1 << 20;

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(13) ^ (i >> 11)) as u8
}

/// A child that writes TOTAL bytes of the pattern to `wr` in pieces of
/// 1000, 7000 and 30000 bytes in turn, then closes it.
fn writer(wr: i32, close: &[i32]) {
    // SAFETY: fork; the child writes from its own buffer and leaves with _exit.
    unsafe {
        if libc::fork() != 0 {
            return;
        }
        for &fd in close {
            libc::close(fd);
        }
        let data: Vec<u8> = (0..TOTAL).map(byte).collect();
        let (mut at, mut k) = (0usize, 0usize);
        while at < TOTAL {
            let n = [1000, 7000, 30000][k % 3].min(TOTAL - at);
            k += 1;
            let w = libc::write(wr, data[at..].as_ptr().cast(), n);
            if w <= 0 {
                libc::_exit(1);
            }
            at += w as usize;
        }
        libc::_exit(0);
    }
}

/// Read `fd` to its end with reads of 1, 100, 4096, 8191 and 65536 bytes
/// in turn through read, recv (read for a pipe) and readv; the bytes that came, and
/// whether they all match the pattern.
fn drain(fd: i32, socket: bool) -> (usize, bool) {
    let mut buf = vec![0u8; 65536];
    let (mut at, mut ok, mut k) = (0usize, true, 0usize);
    loop {
        let want = [1, 100, 4096, 8191, 65536][k % 5];
        // SAFETY: each call writes at most `want` bytes into our buffer.
        let n = unsafe {
            match k % 3 {
                0 => libc::read(fd, buf.as_mut_ptr().cast(), want),
                1 if socket => libc::recv(fd, buf.as_mut_ptr().cast(), want, 0),
                1 => libc::read(fd, buf.as_mut_ptr().cast(), want),
                _ => {
                    let half = want / 2;
                    let iov = [
                        libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: half },
                        libc::iovec { iov_base: buf[half..].as_mut_ptr().cast(), iov_len: want - half },
                    ];
                    libc::readv(fd, iov.as_ptr(), 2)
                }
            }
        };
        k += 1;
        if n <= 0 {
            return (at, ok && n == 0);
        }
        for (j, b) in buf[..n as usize].iter().enumerate() {
            ok &= *b == byte(at + j);
        }
        at += n as usize;
    }
}

fn main() {
    om_fidelity::case(
        || {
            let (mut sv, mut p) = ([0i32; 2], [0i32; 2]);
            // SAFETY: a socketpair and a pipe into our arrays.
            unsafe {
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr());
                libc::pipe(p.as_mut_ptr());
            }
            // The writers start now (a fork while away would run at home);
            // each fills its stream while we wait and blocks until we read.
            writer(sv[1], &[sv[0], p[0], p[1]]);
            writer(p[1], &[sv[0], sv[1], p[0]]);
            // SAFETY: closing the ends the children hold.
            unsafe {
                libc::close(sv[1]);
                libc::close(p[1]);
            }
            (sv[0], p[0])
        },
        |(sock, pipe), seen| {
            let (n, ok) = drain(sock, true);
            seen.expect("socketpair: bytes", n, TOTAL);
            seen.expect("socketpair: every byte in order, then EOF", ok, true);
            let (n, ok) = drain(pipe, false);
            seen.expect("pipe: bytes", n, TOTAL);
            seen.expect("pipe: every byte in order, then EOF", ok, true);
        },
    );
}
