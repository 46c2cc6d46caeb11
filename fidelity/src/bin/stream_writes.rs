//! Streams of small writes arrive whole and in order, and a write after the
//! reader went away fails as natively: a child drains 1 MiB written in
//! 8 KiB writes (through a socketpair, then a pipe), checks every byte,
//! closes its end and says so; the next write fails with EPIPE, and raises
//! SIGPIPE unless sent with MSG_NOSIGNAL.

use std::sync::atomic::{AtomicI32, Ordering};

const TOTAL: usize = 1 << 20;
const CHUNK: usize = 8192;

static SIGPIPES: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_sigpipe(_: i32) {
    SIGPIPES.fetch_add(1, Ordering::SeqCst);
}

fn byte(i: usize) -> u8 {
    (i.wrapping_mul(7) ^ (i >> 12)) as u8
}

/// A child that reads TOTAL bytes from `rd`, checks them, closes `rd`, and
/// writes its verdict ('y' or 'n') to `verdict`; it closes every other fd
/// in `close` first.
fn reader(rd: i32, close: &[i32], verdict: i32) {
    // SAFETY: fork; the child reads into its own buffer, closes fds and
    // leaves with _exit.
    unsafe {
        if libc::fork() != 0 {
            return;
        }
        for &fd in close {
            libc::close(fd);
        }
        let mut buf = vec![0u8; 65536];
        let (mut at, mut ok) = (0usize, true);
        while at < TOTAL {
            let n = libc::read(rd, buf.as_mut_ptr().cast(), buf.len().min(TOTAL - at));
            if n <= 0 {
                ok = false;
                break;
            }
            for (k, b) in buf[..n as usize].iter().enumerate() {
                ok &= *b == byte(at + k);
            }
            at += n as usize;
        }
        libc::close(rd);
        libc::write(verdict, if ok { b"y" } else { b"n" }.as_ptr().cast(), 1);
        libc::_exit(0);
    }
}

fn write_all(fd: i32) -> i64 {
    let data: Vec<u8> = (0..TOTAL).map(byte).collect();
    for c in data.chunks(CHUNK) {
        // SAFETY: a write of our buffer.
        let n = unsafe { libc::write(fd, c.as_ptr().cast(), c.len()) };
        if n != c.len() as isize {
            return om_fidelity::ret(n as i64);
        }
    }
    TOTAL as i64
}

fn verdict(fd: i32) -> String {
    let mut b = [0u8; 1];
    // SAFETY: a read of one byte of our pipe.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    if n == 1 {
        (b[0] as char).to_string()
    } else {
        format!("read {n}")
    }
}

fn main() {
    om_fidelity::case(
        || {
            let (mut sv, mut p, mut v) = ([0i32; 2], [0i32; 2], [0i32; 2]);
            // SAFETY: a socketpair and pipes into our arrays.
            unsafe {
                libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, sv.as_mut_ptr());
                libc::pipe(p.as_mut_ptr());
                libc::pipe(v.as_mut_ptr());
            }
            // The readers start now (a fork while away would run at home).
            reader(sv[1], &[sv[0], p[0], p[1], v[0]], v[1]);
            reader(p[0], &[sv[0], sv[1], p[1], v[0]], v[1]);
            // SAFETY: closing the ends the children hold.
            unsafe {
                libc::close(sv[1]);
                libc::close(p[0]);
                libc::close(v[1]);
            }
            (sv, p, v)
        },
        |(sv, p, v), seen| {
            let one = [1u8; CHUNK];
            // SAFETY: installing a handler of our own.
            unsafe { libc::signal(libc::SIGPIPE, on_sigpipe as *const () as usize) };

            seen.expect("socketpair: written", write_all(sv[0]), TOTAL as i64);
            seen.expect("socketpair: the reader got every byte", verdict(v[0]), "y".to_string());
            // SAFETY: writes of our buffer to our socket.
            let (w, s) = unsafe {
                let w = libc::write(sv[0], one.as_ptr().cast(), CHUNK);
                let w = om_fidelity::ret(w as i64);
                let s = libc::send(sv[0], one.as_ptr().cast(), CHUNK, libc::MSG_NOSIGNAL);
                (w, om_fidelity::ret(s as i64))
            };
            seen.expect("socketpair: write after the reader closed", w, -libc::EPIPE as i64);
            seen.expect("socketpair: send(MSG_NOSIGNAL) after it", s, -libc::EPIPE as i64);
            seen.expect("socketpair: SIGPIPEs", SIGPIPES.swap(0, Ordering::SeqCst), 1);

            seen.expect("pipe: written", write_all(p[1]), TOTAL as i64);
            seen.expect("pipe: the reader got every byte", verdict(v[0]), "y".to_string());
            // SAFETY: a write of our buffer to our pipe.
            let w = om_fidelity::ret(unsafe { libc::write(p[1], one.as_ptr().cast(), CHUNK) } as i64);
            seen.expect("pipe: write after the reader closed", w, -libc::EPIPE as i64);
            seen.expect("pipe: SIGPIPEs", SIGPIPES.swap(0, Ordering::SeqCst), 1);
        },
    );
}
