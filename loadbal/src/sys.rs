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
