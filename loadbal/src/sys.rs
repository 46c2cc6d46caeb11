//! Raw pieces of omd.

use std::io::{self, Write};
use std::os::fd::RawFd;

/// Logs go to a copy of stderr kept at a reserved high fd number, because
/// deputy threads have private fd tables in which fd 2 is the migrated
/// process's stderr.
#[derive(Clone, Copy)]
pub struct LogFd(pub RawFd);

impl Write for LogFd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: buf is a live slice; the fd is om's own reserved log fd.
        let n = unsafe { libc::write(self.0, buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raise the soft fd limit to the hard one and put a copy of stderr in the
/// reserved range; returns it.
pub fn log_fd() -> io::Result<RawFd> {
    let (_, hard) = om_runtime::sys::prlimit(0, libc::RLIMIT_NOFILE, None)?;
    om_runtime::sys::prlimit(0, libc::RLIMIT_NOFILE, Some((hard, hard)))?;
    om_runtime::sys::dup_above(2, om_deputy::serve::reserved_base() + 32)
}

/// The kernel's process-event connector (NETLINK_CONNECTOR, CN_IDX_PROC):
/// reports every fork, so descendants of a process under om are adopted
/// before they can be reparented away.
pub struct ProcEvents {
    fd: std::os::fd::OwnedFd,
}

/// One event: `Fork { parent, child }` for new processes (not threads), `Exit`.
#[derive(Debug, PartialEq, Eq)]
pub enum ProcEvent {
    Fork {
        parent: i32,
        child: i32,
    },
    /// A process ended, with its wait status.
    Exit {
        pid: i32,
        status: i32,
    },
}

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;

impl ProcEvents {
    pub fn open() -> io::Result<ProcEvents> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket() with integer arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_CONNECTOR) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd owned by us from here on.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is valid.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = CN_IDX_PROC;
        use std::os::fd::AsRawFd;
        // SAFETY: sa is a live sockaddr_nl of the given size.
        let r = unsafe {
            libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // nlmsghdr (16) + cn_msg (20) + PROC_CN_MCAST_LISTEN (4)
        let mut m = Vec::with_capacity(40);
        m.extend_from_slice(&40u32.to_le_bytes());
        m.extend_from_slice(&(libc::NLMSG_DONE as u16).to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        m.extend_from_slice(&CN_IDX_PROC.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes()); // CN_VAL_PROC
        m.extend_from_slice(&[0u8; 8]); // seq, ack
        m.extend_from_slice(&4u16.to_le_bytes());
        m.extend_from_slice(&0u16.to_le_bytes());
        m.extend_from_slice(&1u32.to_le_bytes()); // PROC_CN_MCAST_LISTEN
                                                  // SAFETY: m is a live buffer of m.len() bytes.
        let r = unsafe { libc::send(fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(ProcEvents { fd })
    }

    /// Block for the next batch of events.
    pub fn next(&self) -> io::Result<Vec<ProcEvent>> {
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 8192];
        // SAFETY: buf is a live buffer of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(parse_events(&buf[..n as usize]))
    }
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parse netlink messages carrying cn_msg/proc_event payloads.
pub fn parse_events(mut b: &[u8]) -> Vec<ProcEvent> {
    let mut out = Vec::new();
    while b.len() >= 16 {
        let len = u32_at(b, 0).unwrap_or(0) as usize;
        if len < 16 || len > b.len() {
            break;
        }
        let msg = &b[16..len];
        // cn_msg header is 20 bytes; proc_event: what(4) cpu(4) timestamp(8) data.
        if let (Some(what), Some(p)) = (u32_at(msg, 20), msg.get(36..)) {
            match what {
                0x1 => {
                    let (ptgid, cpid, ctgid) = (u32_at(p, 4), u32_at(p, 8), u32_at(p, 12));
                    if let (Some(pt), Some(cp), Some(ct)) = (ptgid, cpid, ctgid) {
                        if cp == ct {
                            out.push(ProcEvent::Fork { parent: pt as i32, child: ct as i32 });
                        }
                    }
                }
                0x8000_0000 => {
                    if let (Some(pid), Some(tgid)) = (u32_at(p, 0), u32_at(p, 4)) {
                        if pid == tgid {
                            let status = u32_at(p, 8).unwrap_or(0) as i32;
                            out.push(ProcEvent::Exit { pid: tgid as i32, status });
                        }
                    }
                }
                _ => {}
            }
        }
        let adv = (len + 3) & !3;
        if adv >= b.len() {
            break;
        }
        b = &b[adv..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, data: [u32; 4]) -> Vec<u8> {
        let mut m = Vec::new();
        let body_len = 20 + 16 + 16;
        m.extend_from_slice(&((16 + body_len) as u32).to_le_bytes());
        m.extend_from_slice(&[0u8; 12]);
        m.extend_from_slice(&[0u8; 20]);
        m.extend_from_slice(&what.to_le_bytes());
        m.extend_from_slice(&[0u8; 12]);
        for d in data {
            m.extend_from_slice(&d.to_le_bytes());
        }
        m
    }

    #[test]
    fn fork_of_a_process_and_not_of_a_thread() {
        let mut b = event(1, [10, 10, 11, 11]);
        b.extend(event(1, [10, 10, 12, 10]));
        // Exit with status 3 << 8 (exit(3)).
        b.extend(event(0x8000_0000, [11, 11, 3 << 8, 0]));
        assert_eq!(
            parse_events(&b),
            vec![ProcEvent::Fork { parent: 10, child: 11 }, ProcEvent::Exit { pid: 11, status: 3 << 8 }]
        );
    }

    #[test]
    fn truncated_input_is_ignored() {
        let b = event(1, [10, 10, 11, 11]);
        assert!(parse_events(&b[..30]).is_empty());
    }
}
