//! Reading ahead for the supervisor (`marshal::READ_AHEAD`): after a read of
//! an fd only this process reads, what follows in the stream is peeked (left
//! there) and sent along; the supervisor answers the next reads from it and
//! has the deputy take what it served (`marshal::READ_TAKE`). Sound only
//! where nobody else can read the data in between, which `Sole` tracks.

use crate::sys as dsys;
use om_runtime::marshal;
use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};

/// The deputy's reading-ahead state.
#[derive(Default)]
pub struct Ahead {
    /// fds nobody else reads from: those omd found so while the process was
    /// frozen, and sockets the process made since; dups of them too.
    sole: HashSet<i32>,
    /// What was last peeked, and on which fd (what the supervisor holds).
    peeked: Option<(i32, Vec<u8>)>,
    tee: Option<(OwnedFd, OwnedFd)>,
    buf: Vec<u8>,
}

impl Ahead {
    pub fn new(sole: &[i32]) -> Ahead {
        Ahead { sole: sole.iter().copied().collect(), ..Ahead::default() }
    }

    /// After forwarded call `name` with `args` returned `ret`: keep track
    /// of which fds stay read by this process alone.
    pub fn after_call(&mut self, name: &str, args: &[u64; 6], ret: i64, sends_control: bool) {
        let fd = args[0] as i32;
        match name {
            // close, close_range: those numbers are free (a later file
            // there is another).
            "close" if ret == 0 => self.forget(fd),
            "close_range" if ret == 0 && args[2] & libc::CLOSE_RANGE_CLOEXEC as u64 == 0 => {
                let gone: Vec<i32> =
                    self.sole.iter().copied().filter(|&f| f as u64 >= args[0] && f as u64 <= args[1]).collect();
                for f in gone {
                    self.forget(f);
                }
            }
            // dup2, dup3: the target is replaced.
            "dup2" | "dup3" if ret >= 0 => {
                let to = args[1] as i32;
                let sole = self.sole.contains(&fd);
                self.forget(to);
                if sole {
                    self.sole.insert(to);
                }
            }
            // dup, F_DUPFD, F_DUPFD_CLOEXEC.
            "dup" | "fcntl"
                if ret >= 0 && (name == "dup" || matches!(args[1], 0 | 1030)) && self.sole.contains(&fd) =>
            {
                self.sole.insert(ret as i32);
            }
            // socket, accept, accept4: new, held here alone.
            "socket" | "accept" | "accept4" if ret >= 0 => {
                self.sole.insert(ret as i32);
            }
            // An fd sent to another process may be read there.
            "sendmsg" if sends_control => {
                self.sole.clear();
                self.peeked = None;
            }
            _ => {}
        }
    }

    fn forget(&mut self, fd: i32) {
        self.sole.remove(&fd);
        if self.peeked.as_ref().is_some_and(|p| p.0 == fd) {
            self.peeked = None;
        }
    }

    /// The read-ahead trailer of a read of `fd` that returned `ret` >= 0:
    /// the bytes peeked (none unless `fd` is read here alone), then their
    /// length as a u32.
    pub fn trailer(&mut self, fd: i32, res: i32, out: &mut Vec<u8>) {
        let mut n = 0;
        if self.sole.contains(&fd) {
            if self.tee.is_none() {
                self.tee = dsys::tee_pipe(res + 8, marshal::AHEAD_MAX).ok();
            }
            let tee = self.tee.as_ref().map(|(r, w)| (r.as_raw_fd(), w.as_raw_fd()));
            self.buf.resize(marshal::AHEAD_MAX, 0);
            n = dsys::peek(fd, &mut self.buf, tee);
            out.extend_from_slice(&self.buf[..n]);
        }
        self.peeked = (n > 0).then(|| (fd, self.buf[..n].to_vec()));
        out.extend_from_slice(&(n as u32).to_le_bytes());
    }

    /// Take `n` bytes of `fd` that the supervisor served from what was
    /// peeked: they are there (nobody else reads the fd), and must be the
    /// bytes peeked.
    pub fn take(&mut self, fd: i32, n: usize) {
        self.buf.resize(n.max(1), 0);
        let mut got = 0usize;
        while got < n {
            let r = om_runtime::sys::raw_syscall(
                0,
                [fd as u64, self.buf[got..].as_mut_ptr() as u64, (n - got) as u64, 0, 0, 0],
            );
            if r == -(libc::EINTR as i64) {
                continue;
            }
            if r <= 0 {
                break;
            }
            got += r as usize;
        }
        let same = match &mut self.peeked {
            Some((f, p)) if *f == fd && p.len() >= got && p[..got] == self.buf[..got] => {
                p.drain(..got);
                true
            }
            _ => false,
        };
        if got != n || !same {
            tracing::error!(fd, n, got, "the bytes taken are not the bytes read ahead; another reader took some");
            self.peeked = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Peeking leaves the bytes in a pipe and in a socket; taking them
    /// removes exactly those.
    #[test]
    fn peek_leaves_and_take_removes() {
        for socket in [false, true] {
            let (r, w) = if socket {
                let (a, b) = std::os::unix::net::UnixStream::pair().expect("pair");
                (OwnedFd::from(a), OwnedFd::from(b))
            } else {
                let (a, b) = std::io::pipe().expect("pipe");
                (OwnedFd::from(a), OwnedFd::from(b))
            };
            let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
            assert_eq!(
                om_runtime::sys::raw_syscall(1, [w.as_raw_fd() as u64, data.as_ptr() as u64, 10_000, 0, 0, 0]),
                10_000
            );
            let fd = r.as_raw_fd();
            let mut a = Ahead::new(&[fd]);
            let mut out = Vec::new();
            a.trailer(fd, 100, &mut out);
            assert_eq!(out.len(), 10_004, "socket {socket}: peeked {} bytes", out.len().saturating_sub(4));
            assert_eq!(&out[..10_000], &data[..]);
            a.take(fd, 4000);
            let mut out = Vec::new();
            a.trailer(fd, 100, &mut out);
            assert_eq!(&out[..6000], &data[4000..], "socket {socket}");
        }
    }
}
