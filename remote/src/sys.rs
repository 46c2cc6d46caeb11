//! Raw pieces of the remote side: creating the guest process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// Start a fresh process that stops at its first instruction, traced by the
/// calling thread (PTRACE_TRACEME before exec), in a session of its own.
/// Its whole address space is replaced by the restore.
pub fn spawn_stopped() -> io::Result<i32> {
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg("--om-guest-stub").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: the closure runs between fork and exec and only makes two
    // async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            if libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(child.id() as i32)
}
