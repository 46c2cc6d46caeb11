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

/// The BPF program (raw `sock_filter` array) for a guest.
pub fn program() -> Result<Vec<u8>, FilterError> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Notify)?;
    for e in TABLE.iter().filter(|e| e.class == Class::Local) {
        let sc = ScmpSyscall::from(e.nr as i32);
        match e.nr {
            // Private anonymous mappings only; file and shared mappings trap.
            9 => ctx.add_rule_conditional(
                ScmpAction::Allow,
                sc,
                &[ScmpArgCompare::new(
                    3,
                    ScmpCompareOp::MaskedEqual((libc::MAP_ANONYMOUS | 0x0f) as u64),
                    (libc::MAP_ANONYMOUS | libc::MAP_PRIVATE) as u64,
                )],
            )?,
            // Own limits only.
            302 => {
                ctx.add_rule_conditional(ScmpAction::Allow, sc, &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, 0)])?
            }
            _ => ctx.add_rule(ScmpAction::Allow, sc)?,
        };
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
        let p = super::program().unwrap();
        assert!(!p.is_empty() && p.len().is_multiple_of(8));
    }
}
