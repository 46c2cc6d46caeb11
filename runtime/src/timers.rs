//! A process's timers: the three interval timers (setitimer) and its POSIX
//! timers (timer_create), which move with it.
//!
//! At capture each timer is read and stopped in one call (setitimer and
//! timer_settime give the old value), so a timer cannot also fire at the
//! source while the process moves: it counts on from where it stood once
//! the process runs again. A rollback arms them again. POSIX timers keep
//! their ids (PR_TIMER_CREATE_RESTORE_IDS), and one that signals a thread
//! (SIGEV_THREAD_ID) signals the same thread, under whatever tid it has
//! there.

use crate::ptrace::{Result, TraceError, Tracee};
use rkyv::{Archive, Deserialize, Serialize};

/// prctl that makes timer_create take the id it is given (Linux 6.16).
const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
const SIGEV_SIGNAL: i32 = 0;
const SIGEV_NONE: i32 = 1;
const SIGEV_THREAD_ID: i32 = 4;
/// The most POSIX timers a process may take along.
pub const MAX_POSIX: usize = 4096;

/// One POSIX timer, as the kernel lists it in /proc/PID/timers plus its
/// setting.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct PosixTimer {
    pub id: i32,
    /// The clock as timer_create was given it (CPU clocks encoded as the
    /// kernel keeps them: -6 the process's, -2 the calling thread's).
    pub clock: i32,
    /// SIGEV_SIGNAL, SIGEV_NONE, or SIGEV_THREAD_ID.
    pub notify: i32,
    pub signo: i32,
    pub value: u64,
    /// For SIGEV_THREAD_ID: the index in the image's threads of the thread
    /// it signals.
    pub thread: u32,
    /// (interval s, ns, value s, ns) when captured; a value of 0 is disarmed.
    pub spec: [u64; 4],
}

/// Every timer of a process.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Timers {
    /// ITIMER_REAL, _VIRTUAL, _PROF as (interval s, us, value s, us).
    pub itimers: Vec<[u64; 4]>,
    pub posix: Vec<PosixTimer>,
}

/// One entry of /proc/PID/timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listed {
    pub id: i32,
    pub signo: i32,
    pub value: u64,
    pub notify: i32,
    /// The pid (or with SIGEV_THREAD_ID the tid) it signals.
    pub target: i32,
    pub clock: i32,
}

/// Parse /proc/PID/timers (four lines a timer: ID, signal, notify, ClockID).
pub fn parse(text: &str) -> Vec<Listed> {
    let mut out = Vec::new();
    let mut cur: Option<Listed> = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(": ") else { continue };
        match k {
            "ID" => {
                out.extend(cur.take());
                cur = v.trim().parse().ok().map(|id| Listed { id, signo: 0, value: 0, notify: 0, target: 0, clock: 0 });
            }
            "signal" => {
                if let (Some(c), Some((s, val))) = (cur.as_mut(), v.split_once('/')) {
                    c.signo = s.trim().parse().unwrap_or(0);
                    c.value = u64::from_str_radix(val.trim(), 16).unwrap_or(0);
                }
            }
            "notify" => {
                // "signal/pid.N", "none/pid.N" or "signal/tid.N".
                if let (Some(c), Some((how, who))) = (cur.as_mut(), v.split_once('/')) {
                    let tid = who.starts_with("tid.");
                    c.notify = match how.trim() {
                        "none" => SIGEV_NONE,
                        _ if tid => SIGEV_THREAD_ID,
                        _ => SIGEV_SIGNAL,
                    };
                    c.target = who.split_once('.').and_then(|(_, n)| n.trim().parse().ok()).unwrap_or(0);
                }
            }
            "ClockID" => {
                if let Some(c) = cur.as_mut() {
                    c.clock = v.trim().parse().unwrap_or(i32::MIN);
                }
            }
            _ => {}
        }
    }
    out.extend(cur);
    out
}

/// The POSIX timers of `pid` (none when it has none or is gone).
pub fn listed(pid: i32) -> Vec<Listed> {
    std::fs::read_to_string(format!("/proc/{pid}/timers")).map(|t| parse(&t)).unwrap_or_default()
}

/// Why timer `t` of a process with `threads` threads cannot move, or None.
pub fn unmovable(t: &Listed, threads: usize) -> Option<String> {
    let id = t.id;
    match t.clock {
        // The wall, monotonic, boot-time and TAI clocks read the same
        // elapsed time on every node.
        0 | 1 | 4 | 5 | 6 | 7 | 11 => None,
        // The process's own CPU time (MAKE_PROCESS_CPUCLOCK(0, SCHED)).
        -6 => None,
        // A thread's CPU time: which thread made it /proc does not say.
        -2 if threads == 1 => None,
        -2 => Some(format!(
            "its POSIX timer {id} counts a thread's CPU time, and with {threads} threads om cannot tell which"
        )),
        8 | 9 => Some(format!(
            "its POSIX timer {id} is on an alarm clock (CLOCK_*_ALARM), which needs CAP_WAKE_ALARM a guest does not have"
        )),
        c if c < 0 => Some(format!("its POSIX timer {id} counts the CPU time of another process or thread")),
        c => Some(format!("its POSIX timer {id} is on clock {c}, which om does not know")),
    }
}

/// Why a timer_create made away must run at home, or None when it can run
/// there: given its clock, the first 16 bytes of its sigevent (None for a
/// NULL one, which signals the process), and the process's thread count.
/// A timer that signals one thread names it by tid, and the process knows
/// its threads by their home tids; a clock om cannot move would keep the
/// process from moving again if it were made away.
pub fn made_at_home(clock: i32, sigevent: Option<&[u8]>, threads: usize) -> Option<String> {
    let notify = sigevent
        .and_then(|b| b.get(12..16))
        .map_or(SIGEV_SIGNAL, |n| i32::from_le_bytes(n.try_into().unwrap_or([0; 4])));
    if notify & SIGEV_THREAD_ID != 0 {
        return Some(
            "a POSIX timer that signals one thread is made at home (it names the thread by its home tid)".into(),
        );
    }
    let l = Listed { id: 0, signo: 0, value: 0, notify, target: 0, clock };
    unmovable(&l, threads).map(|_| format!("a POSIX timer on clock {clock} is made at home"))
}

/// Why the POSIX timers of `pid` (with `threads` threads) cannot move, or
/// None: too many, one om cannot move ([`unmovable`]), or one whose signal
/// is pending (the kernel counts overruns on a timer's pending signal
/// rather than queue it again, which a signal queued anew would not do).
pub fn cant_move(pid: i32, threads: usize) -> Option<String> {
    let all = listed(pid);
    if all.len() > MAX_POSIX {
        return Some(format!("it has {} POSIX timers; om moves at most {MAX_POSIX}", all.len()));
    }
    all.iter().find_map(|t| unmovable(t, threads)).or_else(|| signal_pending(pid, &all))
}

fn signal_pending(pid: i32, all: &[Listed]) -> Option<String> {
    let signalling: Vec<&Listed> = all.iter().filter(|t| t.notify != SIGEV_NONE).collect();
    if signalling.is_empty() {
        return None;
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut pending = crate::procfs::hex_mask(&crate::procfs::status_field_in(&status, "ShdPnd").unwrap_or_default());
    for tid in crate::ptrace::thread_ids(pid) {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")) {
            pending |= crate::procfs::hex_mask(&crate::procfs::status_field_in(&s, "SigPnd").unwrap_or_default());
        }
    }
    signalling.iter().find(|t| (1..=64).contains(&t.signo) && pending & (1u64 << (t.signo - 1)) != 0).map(|t| {
        format!(
            "the signal of its POSIX timer {} (signal {}) is pending; it can move once the signal is taken",
            t.id, t.signo
        )
    })
}

fn words<const N: usize>(b: &[u8]) -> [u64; N] {
    std::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])))
}

fn bytes(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn refused(pid: i32, why: String) -> TraceError {
    TraceError::Io { pid, what: "timers", source: std::io::Error::other(why) }
}

/// Read and stop every timer of the stopped process whose leader is `t`;
/// `tids` are its threads' ids, the leader first. Calls are injected with
/// scratch memory at `at` (64 bytes). On failure the timers stopped so far
/// run again.
pub fn capture(t: &mut Tracee, tids: &[i32], at: u64) -> Result<Timers> {
    let mut got = Timers::default();
    match capture_into(t, tids, at, &mut got) {
        Ok(()) => Ok(got),
        Err(e) => {
            if let Err(again) = rearm(t, &got, at) {
                tracing::error!(%again, pid = t.pid, "cannot arm the process's timers again");
            }
            Err(e)
        }
    }
}

fn capture_into(t: &mut Tracee, tids: &[i32], at: u64, got: &mut Timers) -> Result<()> {
    let pid = t.pid;
    t.poke(at, &[0u8; 32])?;
    for which in 0..3u64 {
        t.syscall_ok("setitimer", libc::SYS_setitimer, [which, at, at + 32, 0, 0, 0])?;
        got.itimers.push(words::<4>(&t.peek(at + 32, 32)?));
    }
    let listed = listed(pid);
    if listed.len() > MAX_POSIX {
        return Err(refused(pid, format!("it has {} POSIX timers; om moves at most {MAX_POSIX}", listed.len())));
    }
    for l in listed {
        if let Some(why) = unmovable(&l, tids.len()) {
            return Err(refused(pid, why));
        }
        let thread = if l.notify == SIGEV_THREAD_ID {
            tids.iter().position(|&x| x == l.target).ok_or_else(|| {
                refused(pid, format!("its POSIX timer {} signals thread {}, which has ended", l.id, l.target))
            })? as u32
        } else {
            0
        };
        t.syscall_ok("timer_settime", libc::SYS_timer_settime, [l.id as u64, 0, at, at + 32, 0, 0])?;
        let spec = words::<4>(&t.peek(at + 32, 32)?);
        got.posix.push(PosixTimer {
            id: l.id,
            clock: l.clock,
            notify: l.notify,
            signo: l.signo,
            value: l.value,
            thread,
            spec,
        });
    }
    // Made again in this order, the kernel's next id follows the highest.
    got.posix.sort_by_key(|p| p.id);
    Ok(())
}

/// Arm again the timers [`capture`] stopped (a move that failed).
pub fn rearm(t: &mut Tracee, timers: &Timers, at: u64) -> Result<()> {
    for (which, it) in timers.itimers.iter().enumerate() {
        t.poke(at, &bytes(it))?;
        t.syscall_ok("setitimer", libc::SYS_setitimer, [which as u64, at, 0, 0, 0, 0])?;
    }
    for p in &timers.posix {
        t.poke(at, &bytes(&p.spec))?;
        t.syscall_ok("timer_settime", libc::SYS_timer_settime, [p.id as u64, 0, at, 0, 0, 0])?;
    }
    Ok(())
}

/// Create the timers in the stopped process whose leader is `t`, under
/// their ids, and start them; `tids` are the kernel's ids of the image's
/// threads here, in the image's order. Calls are injected with scratch
/// memory at `at` (128 bytes).
pub fn restore(t: &mut Tracee, timers: &Timers, tids: &[i32], at: u64) -> Result<()> {
    if !timers.posix.is_empty() {
        t.syscall_ok(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 1, 0, 0, 0, 0],
        )?;
        let made = timers.posix.iter().try_for_each(|p| create(t, p, tids, at));
        t.syscall_ok(
            "prctl(PR_TIMER_CREATE_RESTORE_IDS)",
            libc::SYS_prctl,
            [PR_TIMER_CREATE_RESTORE_IDS, 0, 0, 0, 0, 0],
        )?;
        made?;
    }
    // Started last, so that they count from here.
    rearm(t, timers, at)
}

fn create(t: &mut Tracee, p: &PosixTimer, tids: &[i32], at: u64) -> Result<()> {
    let pid = t.pid;
    let tid = match p.notify {
        SIGEV_THREAD_ID => *tids
            .get(p.thread as usize)
            .ok_or_else(|| refused(pid, format!("POSIX timer {} signals a thread the image lacks", p.id)))?,
        _ => 0,
    };
    // struct sigevent: value, signo, notify, then the thread id.
    let mut ev = [0u8; 64];
    ev[..8].copy_from_slice(&p.value.to_le_bytes());
    ev[8..12].copy_from_slice(&p.signo.to_le_bytes());
    ev[12..16].copy_from_slice(&p.notify.to_le_bytes());
    ev[16..20].copy_from_slice(&tid.to_le_bytes());
    t.poke(at, &ev)?;
    t.poke(at + 64, &p.id.to_le_bytes())?;
    t.syscall_ok("timer_create", libc::SYS_timer_create, [p.clock as i64 as u64, at, at + 64, 0, 0, 0])?;
    let got = i32::from_le_bytes(t.peek(at + 64, 4)?.try_into().unwrap_or([0; 4]));
    if got != p.id {
        return Err(refused(pid, format!("POSIX timer {} came back as {got}", p.id)));
    }
    Ok(())
}

/// Remove every timer from the stopped `t` (the placeholder at home, whose
/// process runs elsewhere): the interval timers stop, the POSIX timers are
/// deleted so that their ids are free when it comes home.
pub fn remove(t: &mut Tracee, timers: &Timers, at: u64) -> Result<()> {
    t.poke(at, &[0u8; 32])?;
    for which in 0..3u64 {
        t.syscall_ok("setitimer", libc::SYS_setitimer, [which, at, 0, 0, 0, 0])?;
    }
    for p in &timers.posix {
        // Gone already when a rebuild failed before creating it.
        t.syscall(libc::SYS_timer_delete, [p.id as u64, 0, 0, 0, 0, 0])?;
    }
    Ok(())
}

/// What bytecheck cannot say about timers that came over the wire: within
/// bounds, on clocks and with notifications om restores, each thread index
/// inside an image of `threads` threads.
pub fn check(timers: &Timers, threads: usize) -> std::result::Result<(), String> {
    if timers.itimers.len() > 3 {
        return Err(format!("{} interval timers", timers.itimers.len()));
    }
    if timers.posix.len() > MAX_POSIX {
        return Err(format!("{} POSIX timers", timers.posix.len()));
    }
    for p in &timers.posix {
        let l = Listed { id: p.id, signo: p.signo, value: p.value, notify: p.notify, target: 0, clock: p.clock };
        if p.id < 0 {
            return Err(format!("POSIX timer id {}", p.id));
        }
        if let Some(why) = unmovable(&l, threads) {
            return Err(why);
        }
        if ![SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID].contains(&p.notify) {
            return Err(format!("POSIX timer {} notifies by {}", p.id, p.notify));
        }
        if p.notify != SIGEV_NONE && !(1..=64).contains(&p.signo) {
            return Err(format!("POSIX timer {} sends signal {}", p.id, p.signo));
        }
        if p.thread as usize >= threads {
            return Err(format!("POSIX timer {} signals thread {} of {threads}", p.id, p.thread));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_kernel_lists() {
        let text = "ID: 3\nsignal: 14/0000000000000000\nnotify: signal/pid.8221\nClockID: 7\n\
                    ID: 2\nsignal: 12/0000000000001234\nnotify: none/pid.8221\nClockID: -6\n\
                    ID: 1\nsignal: 12/0000000000001234\nnotify: signal/tid.8222\nClockID: 0\n";
        let l = parse(text);
        assert_eq!(l.len(), 3);
        assert_eq!(l[0], Listed { id: 3, signo: 14, value: 0, notify: SIGEV_SIGNAL, target: 8221, clock: 7 });
        assert_eq!(l[1].notify, SIGEV_NONE);
        assert_eq!((l[1].value, l[1].clock), (0x1234, -6));
        assert_eq!((l[2].notify, l[2].target), (SIGEV_THREAD_ID, 8222));
        assert!(parse("").is_empty());
    }

    #[test]
    fn clocks_om_cannot_move_are_named() {
        let t = |clock| Listed { id: 5, signo: 10, value: 0, notify: 0, target: 1, clock };
        assert_eq!(unmovable(&t(1), 4), None);
        assert_eq!(unmovable(&t(-6), 4), None);
        assert_eq!(unmovable(&t(-2), 1), None);
        assert!(unmovable(&t(-2), 2).unwrap().contains("thread's CPU time"));
        assert!(unmovable(&t(8), 1).unwrap().contains("CAP_WAKE_ALARM"));
        assert!(unmovable(&t(!(1234 << 3) | 2), 1).unwrap().contains("another process"));
    }

    #[test]
    fn timers_that_name_a_thread_or_an_odd_clock_are_made_at_home() {
        let ev = |notify: i32| {
            let mut b = [0u8; 16];
            b[12..].copy_from_slice(&notify.to_le_bytes());
            b
        };
        assert_eq!(made_at_home(1, None, 4), None);
        assert_eq!(made_at_home(0, Some(&ev(SIGEV_SIGNAL)), 4), None);
        assert_eq!(made_at_home(-6, Some(&ev(SIGEV_NONE)), 4), None);
        assert!(made_at_home(1, Some(&ev(SIGEV_THREAD_ID)), 1).is_some());
        assert!(made_at_home(-2, None, 2).is_some());
        assert_eq!(made_at_home(-2, None, 1), None);
        assert!(made_at_home(9, None, 1).is_some());
    }

    #[test]
    fn hostile_timers_are_refused() {
        let p = PosixTimer { id: 0, clock: 1, notify: 0, signo: 10, value: 0, thread: 0, spec: [0; 4] };
        let ok = Timers { itimers: vec![[0; 4]; 3], posix: vec![p] };
        assert_eq!(check(&ok, 1), Ok(()));
        for bad in [
            PosixTimer { thread: 1, notify: SIGEV_THREAD_ID, ..p },
            PosixTimer { signo: 65, ..p },
            PosixTimer { notify: 2, ..p },
            PosixTimer { id: -1, ..p },
            PosixTimer { clock: 8, ..p },
        ] {
            assert!(check(&Timers { itimers: vec![], posix: vec![bad] }, 1).is_err(), "{bad:?}");
        }
        assert!(check(&Timers { itimers: vec![[0; 4]; 4], posix: vec![] }, 1).is_err());
    }
}
