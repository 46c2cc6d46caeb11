//! How a forwarded call's buffers travel: the remote supervisor and the
//! deputy both follow these rules, driven by [`crate::syscalls::spec`].

use crate::syscalls::Arg;
use crate::wire::SysReq;

/// Largest buffer one forwarded call moves; bigger reads and writes are cut
/// short (a short count, as POSIX allows).
pub const MAX_IO: usize = 8 << 20;
/// A path or name argument is at most this long (PATH_MAX).
pub const MAX_PATH: usize = 4096;
/// Result a deputy gives for a call that must run at home.
pub const GO_HOME: i64 = i64::MIN;

/// Results a deputy gives for a use of the process's controlling terminal
/// from a background process group, where the kernel's job control applies:
/// this base, plus the signal, plus 256 when the group is orphaned. The
/// supervisor decides with the guest's signal state (see `job_control_of`).
const JOB_CONTROL: i64 = i64::MIN + 4096;

/// The deputy's answer for job control: signal `sig`, group orphaned or not.
pub fn job_control(sig: i32, orphaned: bool) -> i64 {
    JOB_CONTROL + sig as i64 + if orphaned { 256 } else { 0 }
}

/// The signal and orphaned flag of a [`job_control`] answer; None for any other result.
pub fn job_control_of(ret: i64) -> Option<(i32, bool)> {
    let k = ret.checked_sub(JOB_CONTROL)?;
    (0..512).contains(&k).then_some(((k & 255) as i32, k >= 256))
}

/// Flags a supervisor adds to a forwarded call's number (`SysReq::nr`)
/// after a [`job_control`] answer: the process ignores or blocks the signal,
/// so the call runs (a write; a read fails with EIO without asking)...
pub const JC_IGNORED: u32 = 1 << 16;
/// ...or the signal goes to the process group: the deputy signals the
/// group's other members and answers [`job_control`] again if still in the
/// background.
pub const JC_SIGNAL: u32 = 1 << 17;
/// A write (write, writev as write, send) whose answer carries, in its
/// data, the room left after it as an i64: what more the fd takes without
/// blocking (see `write_room` in the deputy), or -1 when it is
/// not a blocking stream socket or pipe. See `WRITE_BEHIND`.
pub const WRITE_ROOM: u32 = 1 << 18;
/// A write the supervisor has already answered (it fit in the room the
/// previous write reported): the deputy finishes it whatever EINTR, EAGAIN
/// or a short count say, and its answer only acknowledges it.
pub const WRITE_BEHIND: u32 = 1 << 19;
/// A read (read, or recvfrom with no address and no flags) of an fd only
/// this process reads: the answer carries, after the bytes read, what
/// follows them in the stream, peeked and left there (at most
/// [`AHEAD_MAX`] bytes), then that length as a u32. The supervisor answers
/// the next reads from it, and has the deputy take what it served
/// ([`READ_TAKE`]).
pub const READ_AHEAD: u32 = 1 << 20;
/// Take (read and drop) `args[2]` bytes of fd `args[0]` that the supervisor
/// served from what was peeked; no answer.
pub const READ_TAKE: u32 = 1 << 21;
/// The most a read peeks ahead.
pub const AHEAD_MAX: usize = 256 << 10;
/// The call number without those flags.
pub const NR_MASK: u32 = 0xffff;

/// Whether call `nr` with `args` may read ahead: read, or recvfrom with no
/// address and no flags.
pub fn may_read_ahead(nr: u32, args: &[u64; 6]) -> bool {
    let nr = nr as i64;
    nr == libc::SYS_read || nr == libc::SYS_recvfrom && args[3] == 0 && args[4] == 0 && args[5] == 0
}

/// The most a read-ahead trailer adds to the answer of call `nr_flags`
/// (number and flags) with `args` that returned `ret`: both sides size the
/// answer's frame by it.
pub fn ahead_trailer_max(nr_flags: u32, args: &[u64; 6], ret: i64) -> usize {
    let ahead = nr_flags & READ_AHEAD != 0 && may_read_ahead(nr_flags & NR_MASK, args) && ret >= 0;
    if ahead {
        AHEAD_MAX + 4
    } else {
        0
    }
}

/// Whether call `nr` with `args` may be a write-behind: write, or send on
/// a connected socket (no address) with no flag but MSG_NOSIGNAL.
pub fn may_write_behind(nr: u32, args: &[u64; 6]) -> bool {
    let nr = nr as i64;
    nr == libc::SYS_write || nr == libc::SYS_sendto && args[4] == 0 && args[3] & !(libc::MSG_NOSIGNAL as u64) == 0
}

/// Does this argument carry bytes from the process to home?
pub fn is_in(a: Arg) -> bool {
    matches!(a, Arg::Path | Arg::In(_) | Arg::InOut(_))
}

/// Does this argument carry bytes from home back to the process?
pub fn is_out(a: Arg) -> bool {
    matches!(a, Arg::Out(_) | Arg::OutRet(_) | Arg::OutRetN(..) | Arg::InOut(_))
}

/// Flag on a request's length for an out argument: the guest's current bytes
/// travel in first and all of them come back, whatever the result. Used where
/// the kernel may leave some bytes untouched (control-message padding) or
/// write some before failing (a buffer that ends in an unmapped page), so the
/// guest's buffer ends up byte for byte as natively.
pub const PREFILLED: u32 = 1 << 31;

/// Flag on a request's length for an in-out argument whose tail the guest
/// may read but not write: the request's value of that argument says how many
/// bytes are writable; the rest (at most a page) is placed read-only at home.
pub const READONLY_TAIL: u32 = 1 << 30;

/// The byte count of a request's length field.
pub fn len_of(l: u32) -> usize {
    (l & !(PREFILLED | READONLY_TAIL)) as usize
}

/// Does this argument, with this length field, carry bytes to home?
pub fn is_in_len(a: Arg, l: u32) -> bool {
    is_in(a) || (is_out(a) && l & PREFILLED != 0)
}

/// Bytes sent back for an out argument with this length field.
pub fn out_valid_len(a: Arg, l: u32, ret: i64) -> usize {
    if is_out(a) && l & PREFILLED != 0 {
        len_of(l)
    } else {
        out_valid(a, len_of(l), ret)
    }
}

/// Bytes of an out argument that are sent back, given the call's result.
pub fn out_valid(a: Arg, len: usize, ret: i64) -> usize {
    if ret < 0 {
        // An in-out buffer comes back whole even on failure: the kernel may
        // have written it before failing (getsockopt writes optlen before the
        // value), and what it did not write is the guest's own bytes.
        return if matches!(a, Arg::InOut(_)) { len } else { 0 };
    }
    match a {
        Arg::Out(_) | Arg::InOut(_) => len,
        Arg::OutRet(_) => (ret as usize).min(len),
        Arg::OutRetN(_, n) => (ret as usize).saturating_mul(n).min(len),
        _ => 0,
    }
}

/// Bytes a socklen-sized output (`Out(DerefU32(j))`) carries back: what the
/// kernel said it wrote (the socklen after the call, in `unit`-byte blocks),
/// never more than its buffer. The rest of the guest's buffer stays untouched,
/// as natively.
pub fn socklen_valid(len: usize, post: u32, unit: usize, ret: i64) -> usize {
    if ret < 0 {
        0
    } else {
        (post as usize).saturating_mul(unit).min(len)
    }
}

/// Unit of a call's socklen-sized output (see [`crate::syscalls::sockopt_unit`]).
pub fn socklen_unit(nr: u32, args: &[u64; 6]) -> usize {
    if nr as i64 == libc::SYS_getsockopt {
        crate::syscalls::sockopt_unit(nr, args[1], args[2]).unwrap_or(1)
    } else {
        1
    }
}

/// Check a request against its spec before touching it: every length within
/// limits and the data exactly the sum of the input lengths.
pub fn validate(req: &SysReq, spec: &[Arg], input_len: usize) -> Result<(), String> {
    if spec.len() > 6 {
        return Err("spec longer than six arguments".into());
    }
    let mut want = 0usize;
    for (i, a) in spec.iter().enumerate() {
        let l = len_of(req.lens[i]);
        let limit = if *a == Arg::Path { MAX_PATH + 1 } else { MAX_IO };
        if l > limit {
            return Err(format!("argument {i} of {} bytes exceeds the {limit}-byte limit", l));
        }
        if is_in_len(*a, req.lens[i]) {
            want += l;
        }
    }
    if input_len != want {
        return Err(format!("{input_len} data bytes for {want} bytes of input"));
    }
    Ok(())
}

/// Total bytes the input arguments carry.
pub fn input_len(req: &SysReq, spec: &[Arg]) -> usize {
    spec.iter().enumerate().filter(|(i, a)| is_in_len(**a, req.lens[*i])).map(|(i, _)| len_of(req.lens[i])).sum()
}

/// Bytes a call's answer carries after its outputs: recvmsg returns the
/// name and control lengths and the flags (u32, u32, i32).
pub fn msg_trailer(nr: u32) -> usize {
    if nr as i64 == libc::SYS_recvmsg {
        12
    } else {
        0
    }
}

/// Payloads larger than this travel as a raw data frame after their message
/// (no serialisation copy) instead of inside it.
pub const INLINE_MAX: usize = 4096;

/// The fd numbers a control buffer (sendmsg's msg_control) passes with
/// SCM_RIGHTS. A malformed buffer yields what its well-formed part holds.
pub fn rights_in(ctl: &[u8]) -> Vec<i32> {
    let mut out = Vec::new();
    let mut at = 0usize;
    // struct cmsghdr: cmsg_len (u64), cmsg_level (i32), cmsg_type (i32), data.
    while at + 16 <= ctl.len() {
        let len = u64::from_le_bytes(ctl[at..at + 8].try_into().unwrap_or([0; 8])) as usize;
        let level = i32::from_le_bytes(ctl[at + 8..at + 12].try_into().unwrap_or([0; 4]));
        let kind = i32::from_le_bytes(ctl[at + 12..at + 16].try_into().unwrap_or([0; 4]));
        if len < 16 || at + len > ctl.len() {
            break;
        }
        if level == libc::SOL_SOCKET && kind == libc::SCM_RIGHTS {
            out.extend(ctl[at + 16..at + len].chunks_exact(4).map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]])));
        }
        at += len.div_ceil(8) * 8;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::syscalls::{spec, Len};

    #[test]
    fn read_returns_only_what_was_read() {
        assert_eq!(out_valid(Arg::OutRet(Len::Val(2)), 100, 7), 7);
        assert_eq!(out_valid(Arg::OutRet(Len::Val(2)), 100, -9), 0);
        assert_eq!(out_valid(Arg::OutRetN(Len::Val(2), 12), 120, 3), 36);
        assert_eq!(out_valid(Arg::Out(Len::Const(144)), 144, 0), 144);
    }

    #[test]
    fn validation_rejects_inconsistent_requests() {
        let s = spec(1).unwrap(); // write
        let mut req =
            SysReq { id: 1, lane: 0, nr: 1, args: [1, 0, 3, 0, 0, 0], lens: [0, 3, 0, 0, 0, 0], data: b"abc".to_vec() };
        assert!(validate(&req, s, req.data.len()).is_ok());
        req.data.push(0);
        assert!(validate(&req, s, req.data.len()).is_err());
        req.lens[1] = u32::MAX;
        assert!(validate(&req, s, 3).is_err());
    }
}
