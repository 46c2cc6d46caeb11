//! Calls that name a thread or depend on tids: a thread's exit,
//! priority-inheritance futexes, sched_{get,set}affinity by tid, and
//! timer_create with SIGEV_THREAD_ID.

use super::*;
use om_runtime::timers;

impl Supervisor {
    /// sched_getaffinity or sched_setaffinity of a thread named by its home
    /// tid (or the home pid: the leader): done here on the guest's thread,
    /// which the process may do natively. Another process's goes home.
    pub(super) fn affinity(&mut self, n: &SeccompNotif) -> Flow {
        let (nr, a) = (n.data.nr as u32, n.data.args);
        let Some(tid) = i32::try_from(a[0]).ok().and_then(|t| self.guest_tid_of(t)) else {
            return self.go_home("the CPU placement of another process runs at home", Some(n.id));
        };
        let len = (a[1] as usize).min(1 << 16);
        let r = if syscalls::name(nr) == "sched_getaffinity" {
            match sys::sched_getaffinity(tid, len) {
                Ok(mask) => match sys::process_vm_writev(self.gpid, &mask, &[(a[2], mask.len())]) {
                    Ok(w) if w == mask.len() => mask.len() as i64,
                    _ => -(libc::EFAULT as i64),
                },
                Err(e) => -(e.raw_os_error().unwrap_or(libc::EINVAL) as i64),
            }
        } else {
            match self.read_mem(a[2], len) {
                Some(mask) => match sys::sched_setaffinity(tid, &mask) {
                    Ok(()) => 0,
                    Err(e) => -(e.raw_os_error().unwrap_or(libc::EINVAL) as i64),
                },
                None => -(libc::EFAULT as i64),
            }
        };
        self.reply(n.id, r);
        Flow::Go
    }

    /// A thread's exit, or a futex operation whose word holds a tid (the
    /// filter lets the others run here): alone, it runs here (an exit ends
    /// the placeholder with the same status). With several threads it runs
    /// at home, where the kernel finds the home tids the process's robust
    /// and priority-inheritance futex words hold.
    pub(super) fn home_if_threaded(&mut self, n: &SeccompNotif, why: &str) -> Flow {
        if self.threaded() {
            return self.go_home(why, Some(n.id));
        }
        let _ = sys::seccomp_send(self.lfd(), n.id, 0, true);
        Flow::Go
    }

    /// timer_create runs here, unless the timer would name a thread by its
    /// home tid or use a clock om cannot move ([`timers::made_at_home`]).
    pub(super) fn timer_create(&mut self, n: &SeccompNotif) -> Flow {
        let a = n.data.args;
        let ev = if a[1] == 0 { None } else { self.read_mem(a[1], 16) };
        let threads = if self.threaded() { 2 } else { 1 };
        match timers::made_at_home(a[0] as i32, ev.as_deref(), threads) {
            // An unreadable sigevent: the kernel here answers EFAULT as home's would.
            Some(why) if a[1] == 0 || ev.is_some() => self.go_home(&why, Some(n.id)),
            _ => {
                let _ = sys::seccomp_send(self.lfd(), n.id, 0, true);
                Flow::Go
            }
        }
    }
}
