//! The process's controlling terminal, seen from its deputy. The deputy
//! runs its calls, but the terminal is the process's (its placeholder at
//! home keeps the session and process group), not the deputy's: the
//! kernel's job control would not apply to the deputy's reads, and
//! TIOCGPGRP would fail. Both are done here from what home knows.

use crate::sys as dsys;
use om_runtime::marshal;
use om_runtime::procfs;
use om_runtime::sys;

/// The controlling terminal's state, when `fd` is the process's
/// controlling terminal: (process group, session, foreground group).
fn ctty_of(fd: i32, pid: i32) -> Option<(i64, i64, i64)> {
    let dev = dsys::char_device(fd)?;
    // A terminal at all (one cheap call) before home's /proc is read.
    dsys::tostop(fd)?;
    let st = procfs::stat(pid).ok()?;
    (st.field(7) == dev && dev != 0).then(|| (st.field(5) as i64, st.field(6) as i64, st.field(8) as i64))
}

/// The ioctls that change a terminal, which the kernel checks as for a
/// write (`tty_check_change`): termios sets, flush, flow, break.
fn changes_terminal(req: u64) -> bool {
    matches!(req, 0x5402..=0x5404 | 0x402c542b..=0x402c542d | 0x5409..=0x540b)
}

/// Job control for forwarded call `nr` (read/readv as 0, write/writev as
/// 1, ioctl) by process `pid`: None when it may run; else the deputy's
/// answer, [`marshal::job_control`] of the signal the kernel would send and
/// whether the process group is orphaned. With `signal_group`, the group's
/// other members (the process itself is the supervisor's) get the signal,
/// as the kernel's kill of the group would give it to them.
pub fn job_control(nr: u32, args: &[u64; 6], pid: i32, signal_group: bool) -> Option<i64> {
    let name = om_runtime::syscalls::name(nr);
    let sig = match name {
        "read" => libc::SIGTTIN,
        "write" => libc::SIGTTOU,
        "ioctl" if changes_terminal(args[1]) => libc::SIGTTOU,
        _ => return None,
    };
    let fd = args[0] as i32;
    let (pgrp, _, fg) = ctty_of(fd, pid)?;
    if fg <= 0 || fg == pgrp || (name == "write" && dsys::tostop(fd) != Some(true)) {
        return None;
    }
    let orphaned = procfs::pgrp_orphaned(pid);
    if signal_group && !orphaned {
        for member in procfs::group_members(pgrp as i32) {
            if member != pid {
                let _ = sys::kill(member, sig);
            }
        }
    }
    Some(marshal::job_control(sig, orphaned))
}

/// TIOCGPGRP and TIOCGSID on the process's controlling terminal: the
/// foreground group and the session, from home's view of the process.
/// None for any other call (the kernel answers those for the deputy as
/// it would for the process: on another terminal, ENOTTY).
pub fn ask(nr: u32, args: &[u64; 6], pid: i32) -> Option<i64> {
    if om_runtime::syscalls::name(nr) != "ioctl" || !matches!(args[1], TIOCGPGRP | TIOCGSID) {
        return None;
    }
    let (_, sid, fg) = ctty_of(args[0] as i32, pid)?;
    Some(if args[1] == TIOCGPGRP { fg } else { sid })
}

pub const TIOCGPGRP: u64 = 0x540f;
pub const TIOCGSID: u64 = 0x5429;
