//! The guest's seccomp filter: local calls never trap (decided in BPF),
//! everything else goes to the supervisor as a user notification.

use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};
use om_runtime::syscalls::{Class, TABLE};
use std::io::{Read, Seek};

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("building the seccomp filter: {0}")]
    Seccomp(#[from] libseccomp::error::SeccompError),
    #[error("exporting the seccomp filter: {0}")]
    Io(#[from] std::io::Error),
}

/// prctl options the supervisor handles (the rest of 0..=80 run in the
/// guest): identity settings, and the capability sets, which live at home.
const IDENTITY_PRCTL: [u64; 13] = [
    libc::PR_CAPBSET_READ as u64,
    libc::PR_CAPBSET_DROP as u64,
    libc::PR_CAP_AMBIENT as u64,
    libc::PR_SET_PDEATHSIG as u64,
    libc::PR_GET_PDEATHSIG as u64,
    libc::PR_GET_DUMPABLE as u64,
    libc::PR_SET_DUMPABLE as u64,
    libc::PR_GET_KEEPCAPS as u64,
    libc::PR_SET_KEEPCAPS as u64,
    libc::PR_GET_SECUREBITS as u64,
    libc::PR_SET_SECUREBITS as u64,
    libc::PR_SET_NO_NEW_PRIVS as u64,
    libc::PR_GET_NO_NEW_PRIVS as u64,
];
const PR_SET_VMA: u64 = 0x5356_4d41;
/// futex operations that do not name a thread: WAIT, WAKE, FD, REQUEUE,
/// CMP_REQUEUE, WAKE_OP, WAIT_BITSET, WAKE_BITSET.
const FUTEX_PLAIN_OPS: [u64; 8] = [0, 1, 2, 3, 4, 5, 9, 10];
/// The operation part of a futex op (without PRIVATE and CLOCK_REALTIME).
const FUTEX_CMD_MASK: u64 = 0x7f;

/// The BPF program (raw `sock_filter` array) for the guest `gpid`.
pub fn program(gpid: i32) -> Result<Vec<u8>, FilterError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Notify)?;
    // A signal the guest queues to itself or one of its threads by its own
    // pid here: only the supervisor knows that pid, and injects such a call
    // so that a signal the process sends itself carries its home pid as the
    // sender (and pending signals are queued again after a move).
    for nr in [libc::SYS_rt_tgsigqueueinfo, libc::SYS_rt_sigqueueinfo] {
        ctx.add_rule_conditional(
            ScmpAction::Allow,
            ScmpSyscall::from(nr as i32),
            &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, gpid as u64)],
        )?;
    }
    for e in TABLE.iter().filter(|e| e.class == Class::Local) {
        let sc = ScmpSyscall::from(e.nr as i32);
        match e.name {
            // Private anonymous mappings only; file and shared mappings trap.
            "mmap" => ctx
                .add_rule_conditional(
                    ScmpAction::Allow,
                    sc,
                    &[ScmpArgCompare::new(
                        3,
                        ScmpCompareOp::MaskedEqual((libc::MAP_ANONYMOUS | 0x0f) as u64),
                        (libc::MAP_ANONYMOUS | libc::MAP_PRIVATE) as u64,
                    )],
                )
                .map(drop)?,
            // Own limits only; the calling thread's own CPU placement (for a
            // thread named by its home tid, the supervisor translates).
            "prlimit64" | "sched_setaffinity" | "sched_getaffinity" => {
                ctx.add_rule_conditional(ScmpAction::Allow, sc, &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, 0)])?;
            }
            // A thread's end traps: with several threads it ends at home,
            // where the kernel finds its home tid in its robust futexes.
            "exit" => (),
            // A timer that signals one thread names it by tid: the
            // supervisor sends those home.
            "timer_create" => (),
            // Futexes whose word holds a tid (priority inheritance) trap:
            // the word holds home tids. The others run here.
            "futex" => {
                for op in FUTEX_PLAIN_OPS {
                    ctx.add_rule_conditional(
                        ScmpAction::Allow,
                        sc,
                        &[ScmpArgCompare::new(1, ScmpCompareOp::MaskedEqual(FUTEX_CMD_MASK), op)],
                    )?;
                }
            }
            _ => {
                ctx.add_rule(ScmpAction::Allow, sc)?;
            }
        };
    }
    // prctl runs in the guest, except for the settings that are part of the
    // process's identity (the supervisor answers or sends it home).
    let prctl = ScmpSyscall::from(libc::SYS_prctl as i32);
    for op in (0..=80).chain([PR_SET_VMA]).filter(|op| !IDENTITY_PRCTL.contains(op)) {
        ctx.add_rule_conditional(ScmpAction::Allow, prctl, &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, op)])?;
    }
    let fd = om_runtime::sys::memfd("om-filter")?;
    ctx.export_bpf(&fd)?;
    let mut f = std::fs::File::from(fd);
    f.rewind()?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn program_builds() {
        let p = super::program(1234).unwrap();
        assert!(!p.is_empty() && p.len().is_multiple_of(8));
    }
}
