//! A stopped ptrace tracee and system-call injection.
//!
//! A [`Tracee`] value exists only while the process is in a ptrace-stop, so
//! registers and memory are only reachable then (reverie's typestate idea, cut
//! to what om needs). A tracee that vanishes surfaces as [`TraceError::Died`].

use crate::sys::{self, Regs};
use std::io;

/// Errors of a traced process.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("process {pid} died while traced (status {status:#x})")]
    Died { pid: i32, status: i32 },
    #[error("ptrace on process {pid} failed during {what}: {source}")]
    Io { pid: i32, what: &'static str, source: io::Error },
    #[error("injected {name} in process {pid} failed: errno {errno}")]
    Injected { pid: i32, name: &'static str, errno: i64 },
}

pub type Result<T> = std::result::Result<T, TraceError>;

const TRACESYSGOOD: u64 = libc::PTRACE_O_TRACESYSGOOD as u64;
const EXITKILL: u64 = libc::PTRACE_O_EXITKILL as u64;
const TRACECLONE: u64 = libc::PTRACE_O_TRACECLONE as u64;

/// Restart codes a syscall interrupted by a stop leaves in rax.
const ERESTARTSYS: i64 = -512;
const ERESTARTNOINTR: i64 = -513;
const ERESTARTNOHAND: i64 = -514;
const ERESTART_RESTARTBLOCK: i64 = -516;

/// Undo an interrupted syscall the way the kernel's signal path would: rewind to
/// re-issue it, or report EINTR for `restart_syscall` cases (as CRIU does).
/// Always leaves `orig_rax = -1` so no later path restarts it a second time.
pub fn repair_restart(regs: &mut Regs) {
    let orig = regs.orig_rax as i64;
    if orig >= 0 {
        match regs.rax as i64 {
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND => {
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
            }
            ERESTART_RESTARTBLOCK => regs.rax = (-libc::EINTR as i64) as u64,
            _ => {}
        }
    }
    regs.orig_rax = u64::MAX;
}

/// rt_sigtimedwait ends with EINTR when its thread is stopped by ptrace
/// (signal(7) lists it among the calls a stop interrupts), which without
/// om's freeze it would not. A wait with no timeout is rewound to wait on,
/// unless a signal that would interrupt it natively is pending for thread
/// `tid`. (A timed wait keeps its EINTR: restarted, it would wait its full
/// time again.) Runs before [`repair_restart`], which clears orig_rax.
fn repair_sigwait(tid: i32, regs: &mut Regs) {
    let eintr = -(libc::EINTR as i64);
    if regs.orig_rax as i64 == libc::SYS_rt_sigtimedwait
        && regs.rax as i64 == eintr
        && regs.rdx == 0
        && !crate::procfs::signal_deliverable(tid)
    {
        regs.rip -= 2;
        regs.rax = regs.orig_rax;
    }
}

/// A process held in a ptrace-stop by the calling thread.
pub struct Tracee {
    pub pid: i32,
    /// Address of a `syscall` instruction (0f 05) in the tracee, for injection.
    pub syscall_ip: u64,
    /// Signals that arrived while we held the process; re-sent on release.
    pub deferred: Vec<i32>,
    /// Registers to put back when the tracee resumes (already repaired).
    pub saved: Regs,
}

fn io_err(pid: i32, what: &'static str) -> impl FnOnce(io::Error) -> TraceError {
    move |source| {
        if source.raw_os_error() == Some(libc::ESRCH) {
            TraceError::Died { pid, status: -1 }
        } else {
            TraceError::Io { pid, what, source }
        }
    }
}

/// Whether `pid` is a zombie or gone.
pub fn has_ended(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')),
        Err(_) => true,
    }
}

impl Tracee {
    /// Seize a running process and bring it to a stop (`PTRACE_SEIZE` + `INTERRUPT`).
    /// `kill_on_exit` sets `PTRACE_O_EXITKILL` (for guests, never for home processes).
    pub fn seize(pid: i32, kill_on_exit: bool) -> Result<Tracee> {
        Self::seize_then(pid, kill_on_exit, &mut || {})
    }

    /// Seize and interrupt, run `before_wait` (e.g. answer the seccomp
    /// notification the process waits in, so it can reach the stop), then wait.
    pub fn seize_then(pid: i32, kill_on_exit: bool, before_wait: &mut dyn FnMut()) -> Result<Tracee> {
        let opts = TRACESYSGOOD | if kill_on_exit { EXITKILL } else { 0 };
        sys::ptrace_seize(pid, opts).map_err(|e| {
            // A process that has ended (a zombie) refuses with EPERM.
            if e.raw_os_error() == Some(libc::EPERM) && has_ended(pid) {
                TraceError::Died { pid, status: -1 }
            } else {
                io_err(pid, "seize")(e)
            }
        })?;
        sys::ptrace_interrupt(pid).map_err(io_err(pid, "interrupt"))?;
        before_wait();
        let mut t = Tracee { pid, syscall_ip: 0, deferred: Vec::new(), saved: zero_regs() };
        t.wait_first_stop()?;
        t.saved = sys::ptrace_getregs(pid).map_err(io_err(pid, "getregs"))?;
        repair_sigwait(pid, &mut t.saved);
        repair_restart(&mut t.saved);
        Ok(t)
    }

    /// Adopt a child that called `PTRACE_TRACEME` and then exec'd: it is stopped
    /// by SIGTRAP at its first instruction.
    pub fn adopt_traceme_child(pid: i32) -> Result<Tracee> {
        let (_, status) = sys::waitpid(pid, libc::__WALL).map_err(io_err(pid, "wait"))?;
        if !libc::WIFSTOPPED(status) {
            return Err(TraceError::Died { pid, status });
        }
        // Clones are traced: the rebuild creates the process's threads.
        sys::ptrace_setoptions(pid, TRACESYSGOOD | EXITKILL | TRACECLONE).map_err(io_err(pid, "setoptions"))?;
        let mut saved = sys::ptrace_getregs(pid).map_err(io_err(pid, "getregs"))?;
        saved.orig_rax = u64::MAX;
        Ok(Tracee { pid, syscall_ip: 0, deferred: Vec::new(), saved })
    }

    /// Adopt thread `tid`, just cloned by a tracee that traces clones: it
    /// starts in a stop (SIGSTOP, suppressed here) before its first
    /// instruction. Calls are injected through `syscall_ip`.
    pub fn adopt_clone(tid: i32, syscall_ip: u64) -> Result<Tracee> {
        let (_, status) = sys::waitpid(tid, libc::__WALL).map_err(io_err(tid, "wait"))?;
        if !libc::WIFSTOPPED(status) {
            return Err(TraceError::Died { pid: tid, status });
        }
        let mut saved = sys::ptrace_getregs(tid).map_err(io_err(tid, "getregs"))?;
        saved.orig_rax = u64::MAX;
        Ok(Tracee { pid: tid, syscall_ip, deferred: Vec::new(), saved })
    }

    /// Seize and stop a running process, keeping its registers exactly as
    /// the stop found them (a call it was in, interrupted, is restarted or
    /// failed by the kernel once it is let go, as for any signal).
    pub fn seize_exact(pid: i32, kill_on_exit: bool) -> Result<Tracee> {
        Self::seize_exact_then(pid, kill_on_exit, &mut || {})
    }

    /// [`Tracee::seize_exact`], running `before_wait` between the interrupt
    /// and the wait (e.g. answering the seccomp notification the process
    /// waits in, which only an answer ends).
    pub fn seize_exact_then(pid: i32, kill_on_exit: bool, before_wait: &mut dyn FnMut()) -> Result<Tracee> {
        let opts = TRACESYSGOOD | if kill_on_exit { EXITKILL } else { 0 };
        sys::ptrace_seize(pid, opts).map_err(io_err(pid, "seize"))?;
        sys::ptrace_interrupt(pid).map_err(io_err(pid, "interrupt"))?;
        before_wait();
        let mut t = Tracee { pid, syscall_ip: 0, deferred: Vec::new(), saved: zero_regs() };
        t.wait_first_stop()?;
        t.saved = sys::ptrace_getregs(pid).map_err(io_err(pid, "getregs"))?;
        Ok(t)
    }

    /// For a tracee held with its registers exact ([`Tracee::seize_exact`]):
    /// if the stop cut a wait in rt_sigtimedwait short, wait on, unless a
    /// signal pending now would have cut it short natively. Call it last,
    /// after queueing any signals, before letting the thread go.
    pub fn repair_sigwait(&mut self) {
        repair_sigwait(self.pid, &mut self.saved);
    }

    /// Inject calls through a `syscall` instruction of the vdso (its
    /// fallback paths have them). False if none is found.
    pub fn use_vdso_syscall(&mut self) -> Result<bool> {
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", self.pid)).unwrap_or_default();
        let Some(range) = maps.lines().find(|l| l.ends_with("[vdso]")).and_then(|l| l.split(' ').next()) else {
            return Ok(false);
        };
        let Some((a, b)) = range.split_once('-') else { return Ok(false) };
        let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else { return Ok(false) };
        let text = self.peek(a, (b - a) as usize)?;
        match text.windows(2).position(|w| w == [0x0f, 0x05]) {
            Some(i) => {
                self.syscall_ip = a + i as u64;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Inject calls through the `syscall` instruction the process has just
    /// returned from (it stopped right after a call). False if the bytes
    /// before its instruction pointer are not one.
    pub fn use_last_syscall(&mut self) -> Result<bool> {
        let at = self.saved.rip.wrapping_sub(2);
        if self.peek(at, 2)? == [0x0f, 0x05] {
            self.syscall_ip = at;
            return Ok(true);
        }
        Ok(false)
    }

    /// Stop a process this thread already traces (e.g. a parked placeholder).
    pub fn interrupt(pid: i32, syscall_ip: u64) -> Result<Tracee> {
        sys::ptrace_interrupt(pid).map_err(io_err(pid, "interrupt"))?;
        let mut t = Tracee { pid, syscall_ip, deferred: Vec::new(), saved: zero_regs() };
        t.wait_stop()?;
        t.saved = sys::ptrace_getregs(pid).map_err(io_err(pid, "getregs"))?;
        repair_sigwait(pid, &mut t.saved);
        repair_restart(&mut t.saved);
        Ok(t)
    }

    /// Like [`Tracee::wait_stop`], for the stop right after a seize: if it
    /// takes more than 5 s, say where the process is (a process that never
    /// stops would leave a move waiting here), then wait on.
    fn wait_first_stop(&mut self) -> Result<()> {
        let t0 = std::time::Instant::now();
        let mut nap = std::time::Duration::from_micros(20);
        while t0.elapsed() < std::time::Duration::from_secs(5) {
            match sys::waitpid(self.pid, libc::__WALL | libc::WNOHANG) {
                Ok((0, _)) => {
                    std::thread::sleep(nap);
                    nap = (nap * 2).min(std::time::Duration::from_millis(2));
                }
                Ok((_, status)) => return self.took_stop(status),
                Err(e) => return Err(io_err(self.pid, "wait")(e)),
            }
        }
        let read = |f: &str| std::fs::read_to_string(format!("/proc/{}/{f}", self.pid)).unwrap_or_default();
        let status = read("status");
        let field = |k: &str| status.lines().find(|l| l.starts_with(k)).unwrap_or("").to_string();
        tracing::warn!(
            pid = self.pid,
            state = field("State:"),
            wchan = read("wchan"),
            syscall = read("syscall").trim(),
            pending = field("SigPnd:"),
            blocked = field("SigBlk:"),
            "the process has not stopped 5 s after PTRACE_INTERRUPT; still waiting"
        );
        self.wait_stop()
    }

    /// Wait for the stop that PTRACE_INTERRUPT asked for; signals that arrive
    /// first are deferred (the process is in a ptrace-stop either way).
    fn wait_stop(&mut self) -> Result<()> {
        let (_, status) = sys::waitpid(self.pid, libc::__WALL).map_err(io_err(self.pid, "wait"))?;
        self.took_stop(status)
    }

    fn took_stop(&mut self, status: i32) -> Result<()> {
        if !libc::WIFSTOPPED(status) {
            return Err(TraceError::Died { pid: self.pid, status });
        }
        let sig = libc::WSTOPSIG(status);
        let event = status >> 16;
        if event == 0 && sig != libc::SIGTRAP && sig != (libc::SIGTRAP | 0x80) {
            self.deferred.push(sig);
        }
        Ok(())
    }

    pub fn regs(&self) -> Result<Regs> {
        sys::ptrace_getregs(self.pid).map_err(io_err(self.pid, "getregs"))
    }

    pub fn set_regs(&self, regs: &Regs) -> Result<()> {
        sys::ptrace_setregs(self.pid, regs).map_err(io_err(self.pid, "setregs"))
    }

    /// Run one system call inside the tracee and return its raw result.
    pub fn syscall(&mut self, nr: i64, args: [u64; 6]) -> Result<i64> {
        self.syscall_hooked(nr, args, &mut || Ok(()))
    }

    /// Have the stopped process queue signal `sig` with siginfo `info` (128
    /// bytes) to itself: rt_tgsigqueueinfo, which takes any sender and code
    /// only for a signal to oneself. `info` passes through memory at `at`,
    /// which is put back after. Returns the call's result (0 or -errno).
    pub fn queue_to_self(&mut self, sig: i32, info: &[u8], at: u64) -> Result<i64> {
        self.queue_signal(Some(self.pid), sig, info, at)
    }

    /// Have the stopped leader queue signal `sig` with siginfo `info` to
    /// its thread `to`, or to its whole process (None: a thread that does
    /// not block it takes it, as for kill). The kernel takes any sender and
    /// code from the leader for its own group. As [`Tracee::queue_to_self`].
    pub fn queue_signal(&mut self, to: Option<i32>, sig: i32, info: &[u8], at: u64) -> Result<i64> {
        let keep = self.peek(at, info.len())?;
        self.poke(at, info)?;
        let p = self.pid as u64;
        let r = match to {
            Some(tid) => self.syscall(libc::SYS_rt_tgsigqueueinfo, [p, tid as u64, sig as u64, at, 0, 0]),
            None => self.syscall(libc::SYS_rt_sigqueueinfo, [p, sig as u64, at, 0, 0, 0]),
        };
        self.poke(at, &keep)?;
        r
    }

    /// Have this stopped thread of process `tgid` queue `sig` with siginfo
    /// `info` to itself (the kernel takes any sender and code for a signal a
    /// thread sends itself). As [`Tracee::queue_to_self`].
    pub fn queue_to_own_thread(&mut self, tgid: i32, sig: i32, info: &[u8], at: u64) -> Result<i64> {
        let keep = self.peek(at, info.len())?;
        self.poke(at, info)?;
        let r = self.syscall(libc::SYS_rt_tgsigqueueinfo, [tgid as u64, self.pid as u64, sig as u64, at, 0, 0]);
        self.poke(at, &keep)?;
        r
    }

    /// Like [`Tracee::syscall`], calling `between` after the tracee was let go
    /// from its entry stop and before waiting for the exit stop (to answer a
    /// seccomp notification the call raises).
    pub fn syscall_hooked(
        &mut self,
        nr: i64,
        args: [u64; 6],
        between: &mut dyn FnMut() -> io::Result<()>,
    ) -> Result<i64> {
        assert!(self.syscall_ip != 0, "no syscall instruction known in tracee");
        let mut r = self.saved;
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.rip = self.syscall_ip;
        self.set_regs(&r)?;
        // Two stops: entry, then exit. Signals in between are deferred.
        for stop in 0..2 {
            loop {
                sys::ptrace_syscall(self.pid, 0).map_err(io_err(self.pid, "syscall"))?;
                if stop == 1 {
                    between().map_err(io_err(self.pid, "between stops"))?;
                }
                let (_, status) = sys::waitpid(self.pid, libc::__WALL).map_err(io_err(self.pid, "wait"))?;
                if !libc::WIFSTOPPED(status) {
                    return Err(TraceError::Died { pid: self.pid, status });
                }
                let sig = libc::WSTOPSIG(status);
                if sig == (libc::SIGTRAP | 0x80) {
                    break;
                }
                if status >> 16 == 0 && sig != libc::SIGTRAP {
                    self.deferred.push(sig);
                }
            }
        }
        let out = self.regs()?;
        self.set_regs(&self.saved)?;
        Ok(out.rax as i64)
    }

    /// Like [`Tracee::syscall`] but a negative result is an error naming the call.
    pub fn syscall_ok(&mut self, name: &'static str, nr: i64, args: [u64; 6]) -> Result<u64> {
        let r = self.syscall(nr, args)?;
        if (-4095..0).contains(&r) {
            return Err(TraceError::Injected { pid: self.pid, name, errno: -r });
        }
        Ok(r as u64)
    }

    /// Write bytes into the tracee through /proc/PID/mem (works on read-only pages).
    pub fn poke(&self, addr: u64, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{}/mem", self.pid))
            .map_err(io_err(self.pid, "open mem"))?;
        f.write_all_at(data, addr).map_err(io_err(self.pid, "write mem"))
    }

    pub fn peek(&self, addr: u64, len: usize) -> Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(format!("/proc/{}/mem", self.pid)).map_err(io_err(self.pid, "open mem"))?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, addr).map_err(io_err(self.pid, "read mem"))?;
        Ok(buf)
    }

    /// Put the saved registers back and let the process go, re-sending deferred signals.
    pub fn detach(self) -> Result<()> {
        self.set_regs(&self.saved)?;
        sys::ptrace_detach(self.pid, 0).map_err(io_err(self.pid, "detach"))?;
        for sig in self.deferred {
            let _ = sys::kill(self.pid, sig);
        }
        Ok(())
    }

    /// Its blocked signals (PTRACE_GETSIGMASK).
    pub fn sigmask(&self) -> Result<u64> {
        sys::ptrace_get_sigmask(self.pid).map_err(io_err(self.pid, "getsigmask"))
    }

    /// Set its blocked signals (PTRACE_SETSIGMASK).
    pub fn set_sigmask(&self, mask: u64) -> Result<()> {
        sys::ptrace_set_sigmask(self.pid, mask).map_err(io_err(self.pid, "setsigmask"))
    }

    /// Its FPU/SSE/AVX state (NT_X86_XSTATE).
    pub fn xstate(&self) -> Result<Vec<u8>> {
        sys::ptrace_get_xstate(self.pid).map_err(io_err(self.pid, "xstate"))
    }

    pub fn set_xstate(&self, xstate: &[u8]) -> Result<()> {
        sys::ptrace_set_xstate(self.pid, xstate).map_err(io_err(self.pid, "setxstate"))
    }

    /// Its rseq registration (area, length, signature), zeroes if none.
    pub fn rseq(&self) -> (u64, u32, u32) {
        sys::ptrace_get_rseq(self.pid).unwrap_or((0, 0, 0))
    }

    /// The signals queued for it, whole: its own queue, or its process's.
    pub fn queued_signals(&self, shared: bool) -> Result<Vec<Vec<u8>>> {
        let q = sys::ptrace_peek_siginfo(self.pid, shared).map_err(io_err(self.pid, "queued signals"))?;
        Ok(q.into_iter().map(|i| i.to_vec()).collect())
    }

    /// Let it run on, still traced, with the saved registers: the running side.
    pub fn run_on(self) -> Result<Running> {
        self.resume_traced()?;
        Ok(Running { tid: self.pid })
    }

    /// Resume under trace (PTRACE_CONT) with the saved registers.
    pub fn resume_traced(&self) -> Result<()> {
        self.set_regs(&self.saved)?;
        sys::ptrace_cont(self.pid, 0).map_err(io_err(self.pid, "cont"))
    }
}

/// A task this thread traces while it runs (a parked placeholder thread):
/// it can only be polled for a stop, and let go on from one (the `Running`
/// side of the typestate; [`Tracee`] is the stopped side, reached with
/// [`Tracee::interrupt`]).
pub struct Running {
    pub tid: i32,
}

/// What a [`Running`] task stopped for.
pub enum Stop {
    /// Signal-delivery-stop: the signal, with its siginfo (128 bytes, or
    /// empty if it could not be read).
    Signal { sig: i32, info: Vec<u8> },
    /// Group-stop for this signal (PTRACE_EVENT_STOP).
    Group(i32),
    /// A trap or another ptrace event.
    Trap,
    /// It has ended (or cannot be waited for): the raw wait status, -1 if none.
    Ended(i32),
}

impl Running {
    /// The stop it is in, if it stopped since it was last let go.
    pub fn poll(&self) -> Option<Stop> {
        match sys::waitpid(self.tid, libc::__WALL | libc::WNOHANG) {
            Ok((0, _)) => None,
            Ok((_, st)) => Some(self.stop_of(st)),
            Err(_) => Some(Stop::Ended(-1)),
        }
    }

    fn stop_of(&self, st: i32) -> Stop {
        if !libc::WIFSTOPPED(st) {
            return Stop::Ended(st);
        }
        let sig = libc::WSTOPSIG(st);
        if st >> 16 == libc::PTRACE_EVENT_STOP {
            Stop::Group(sig)
        } else if st >> 16 != 0 || sig == libc::SIGTRAP {
            Stop::Trap
        } else {
            Stop::Signal { sig, info: sys::ptrace_get_siginfo(self.tid).map(|i| i.to_vec()).unwrap_or_default() }
        }
    }

    /// Wait for its next stop or its end.
    pub fn wait(&self) -> Stop {
        match sys::waitpid(self.tid, libc::__WALL) {
            Ok((_, st)) => self.stop_of(st),
            Err(_) => Stop::Ended(-1),
        }
    }

    /// Let it go on from its stop, delivering `sig` (0: none).
    pub fn resume(&self, sig: i32) {
        let _ = sys::ptrace_cont(self.tid, sig);
    }

    /// Keep it in its group-stop, told of later events (PTRACE_LISTEN).
    pub fn listen(&self) {
        let _ = sys::ptrace_listen(self.tid);
    }
}

/// The thread ids of process `pid` (/proc/PID/task), the leader first.
pub fn thread_ids(pid: i32) -> Vec<i32> {
    let mut ids: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    ids.sort_by_key(|&t| (t != pid, t));
    ids
}

/// Seize and stop every thread of process `pid`, the leader first, each
/// with its restart state repaired (as [`Tracee::seize`]). A thread started
/// meanwhile is found by listing the threads again until every one listed
/// is held (a held thread starts none); one that ended meanwhile is left
/// out. On failure the threads already held are let go.
pub fn seize_all(pid: i32, kill_on_exit: bool) -> Result<Vec<Tracee>> {
    seize_all_then(pid, kill_on_exit, &mut |_| {})
}

/// [`seize_all`], running `before_wait(tid)` once each thread was asked to
/// stop, before waiting for it (e.g. answering a seccomp notification the
/// thread waits in with a restart code: only with the stop pending does the
/// kernel restart the call, and the thread then stops).
pub fn seize_all_then(pid: i32, kill_on_exit: bool, before_wait: &mut dyn FnMut(i32)) -> Result<Vec<Tracee>> {
    let mut held = vec![Tracee::seize_then(pid, kill_on_exit, &mut || before_wait(pid))?];
    loop {
        let new: Vec<i32> = thread_ids(pid).into_iter().filter(|t| held.iter().all(|h| h.pid != *t)).collect();
        if new.is_empty() {
            return Ok(held);
        }
        for tid in new {
            match Tracee::seize_then(tid, kill_on_exit, &mut || before_wait(tid)) {
                Ok(t) => held.push(t),
                Err(TraceError::Died { .. }) => {}
                Err(e) => {
                    for t in held {
                        let _ = t.detach();
                    }
                    return Err(e);
                }
            }
        }
    }
}

pub use crate::sys::zero_regs;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_rewinds_erestartsys() {
        let mut r = zero_regs();
        r.orig_rax = 230;
        r.rax = (-514i64) as u64;
        r.rip = 0x1000;
        repair_restart(&mut r);
        assert_eq!(r.rip, 0x0ffe);
        assert_eq!(r.rax, 230);
        assert_eq!(r.orig_rax, u64::MAX);
    }

    #[test]
    fn restart_block_becomes_eintr() {
        let mut r = zero_regs();
        r.orig_rax = 35;
        r.rax = (-516i64) as u64;
        r.rip = 0x1000;
        repair_restart(&mut r);
        assert_eq!(r.rip, 0x1000);
        assert_eq!(r.rax as i64, -4);
    }

    #[test]
    fn finished_syscall_untouched() {
        let mut r = zero_regs();
        r.orig_rax = 0;
        r.rax = 5;
        r.rip = 0x1000;
        repair_restart(&mut r);
        assert_eq!((r.rip, r.rax), (0x1000, 5));
    }
}
