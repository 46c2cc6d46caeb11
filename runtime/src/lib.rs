//! om runtime: what every node shares.
//!
//! - [`image`]: capture a frozen process and rebuild it elsewhere;
//! - [`ptrace`]: the stopped-tracee type and syscall injection;
//! - [`syscalls`]: the table of every x86_64 syscall and how a migrated process gets it served;
//! - [`wire`]: validated frames for node links and the control socket;
//! - [`client`]: the control-socket client used by `om-exec`, `omctl` and batch tools.

pub mod client;
pub mod dirty;
pub mod embed;
pub mod gang;
pub mod image;
pub mod lazy;
pub mod link;
pub mod marshal;
pub mod mon;
pub mod procfs;
pub mod ptrace;
pub mod sim;
pub mod sys;
pub mod syscalls;
pub mod timers;
pub mod transfer;
pub mod wire;
