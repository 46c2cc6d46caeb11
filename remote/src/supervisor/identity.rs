//! Identity calls answered with home's values: the ids (getpid, gettid,
//! getuid, getgroups, getpgid...) and the prctl settings that are part of
//! the process's identity.

use super::*;

impl Supervisor {
    /// Identity and self-signal calls. `None`: not answerable here, forward it.
    pub(super) fn emulate(&mut self, name: &str, n: &SeccompNotif) -> Option<i64> {
        let a = n.data.args;
        let home = self.home_pid as u64;
        let c = &self.creds;
        Some(match name {
            "getpid" => self.home_pid as i64,
            "gettid" => self.home_tid_of(n.pid as i32).unwrap_or(self.home_pid) as i64,
            "getuid" => c.uids[0] as i64,
            "geteuid" => c.uids[1] as i64,
            "getgid" => c.gids[0] as i64,
            "getegid" => c.gids[1] as i64,
            "getresuid" | "getresgid" => {
                let v = if name == "getresuid" { c.uids } else { c.gids };
                for (i, x) in v.iter().enumerate() {
                    if a[i] != 0 && sys::process_vm_writev(self.gpid, &x.to_le_bytes(), &[(a[i], 4)]).is_err() {
                        return Some(-libc::EFAULT as i64);
                    }
                }
                0
            }
            "getgroups" => {
                let size = a[0] as usize;
                let g = &c.groups;
                if size == 0 {
                    g.len() as i64
                } else if size < g.len() {
                    -libc::EINVAL as i64
                } else {
                    let b: Vec<u8> = g.iter().flat_map(|x| x.to_le_bytes()).collect();
                    if !b.is_empty() && sys::process_vm_writev(self.gpid, &b, &[(a[1], b.len())]).is_err() {
                        return Some(-libc::EFAULT as i64);
                    }
                    g.len() as i64
                }
            }
            "getpgrp" => self.pgid as i64,
            "getpgid" if a[0] == 0 || a[0] == home => self.pgid as i64,
            "getsid" if a[0] == 0 || a[0] == home => self.sid as i64,
            _ => return None,
        })
    }

    /// The prctl settings that are part of the process's identity (the
    /// filter lets the others run in the guest): read from what home had;
    /// changed only at home.
    pub(super) fn prctl(&mut self, n: &SeccompNotif) -> Flow {
        let a = n.data.args;
        let f = &self.proc_flags;
        let v = match a[0] as i32 {
            libc::PR_GET_DUMPABLE => f.dumpable as i64,
            libc::PR_GET_NO_NEW_PRIVS => f.no_new_privs as i64,
            libc::PR_GET_KEEPCAPS => f.keepcaps as i64,
            libc::PR_GET_SECUREBITS => f.securebits as i64,
            libc::PR_GET_PDEATHSIG => {
                let sig = (f.pdeathsig as u32).to_le_bytes();
                match sys::process_vm_writev(self.gpid, &sig, &[(a[1], 4)]) {
                    Ok(4) => 0,
                    _ => -libc::EFAULT as i64,
                }
            }
            _ => return self.go_home("this prctl runs at home", Some(n.id)),
        };
        self.reply(n.id, v);
        Flow::Go
    }
}
