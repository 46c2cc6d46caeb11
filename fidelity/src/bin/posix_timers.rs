//! POSIX timers (timer_create) move with the process, under their ids: a
//! one-shot timer fires once with its value, one that signals a thread by
//! tid (SIGEV_THREAD_ID) signals it, a periodic one keeps its period, one
//! with no notification keeps counting, a disarmed one stays disarmed, and
//! the next timer made gets the id home would give. (The periodic timer
//! first fires after the move out: a timer signal pending then would keep
//! the process home.)

use std::time::Duration;

const ONE_SHOT: i32 = 2;
const TO_THREAD: i32 = 3;
const PERIODIC: i32 = 4;

/// Make a timer on `clock` and arm it (`value`, `interval`, in ms).
fn timer(clock: libc::clockid_t, ev: Option<libc::sigevent>, value: i64, interval: i64) -> libc::timer_t {
    let mut id: libc::timer_t = std::ptr::null_mut();
    let ev = ev.map(Box::new);
    let evp = ev.as_ref().map_or(std::ptr::null_mut(), |e| &**e as *const libc::sigevent as *mut libc::sigevent);
    let ts = |ms: i64| libc::timespec { tv_sec: ms / 1000, tv_nsec: ms % 1000 * 1_000_000 };
    let spec = libc::itimerspec { it_interval: ts(interval), it_value: ts(value) };
    // SAFETY: a timer of our own, its sigevent and setting live across the calls.
    unsafe {
        assert_eq!(libc::timer_create(clock, evp, &mut id), 0, "timer_create");
        assert_eq!(libc::timer_settime(id, 0, &spec, std::ptr::null_mut()), 0, "timer_settime");
    }
    id
}

fn signal_event(sig: i32, value: usize, thread: Option<i32>) -> libc::sigevent {
    // SAFETY: plain data.
    let mut ev: libc::sigevent = unsafe { std::mem::zeroed() };
    ev.sigev_signo = sig;
    ev.sigev_value = libc::sigval { sival_ptr: value as *mut libc::c_void };
    ev.sigev_notify = libc::SIGEV_SIGNAL;
    if let Some(tid) = thread {
        ev.sigev_notify = libc::SIGEV_THREAD_ID;
        ev.sigev_notify_thread_id = tid;
    }
    ev
}

fn silent() -> libc::sigevent {
    let mut ev = signal_event(0, 0, None);
    ev.sigev_notify = libc::SIGEV_NONE;
    ev
}

fn remaining(id: libc::timer_t) -> (Duration, Duration) {
    // SAFETY: plain data filled by the kernel for a timer of our own.
    let mut cur: libc::itimerspec = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::timer_gettime(id, &mut cur) };
    assert_eq!(r, 0, "timer_gettime");
    let d = |t: libc::timespec| Duration::new(t.tv_sec as u64, t.tv_nsec as u32);
    (d(cur.it_value), d(cur.it_interval))
}

fn main() {
    let rt = libc::SIGRTMIN();
    om_fidelity::case(
        || {
            // SAFETY: blocking signals of our own.
            let set = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                for s in [ONE_SHOT, TO_THREAD, PERIODIC] {
                    libc::sigaddset(&mut set, rt + s);
                }
                libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                set
            };
            // SAFETY: our own thread id.
            let me = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
            let ids = [
                timer(libc::CLOCK_MONOTONIC, Some(signal_event(rt + ONE_SHOT, 0xabc, None)), 1500, 0),
                timer(libc::CLOCK_REALTIME, Some(signal_event(rt + TO_THREAD, 0xdef, Some(me))), 1700, 0),
                timer(libc::CLOCK_MONOTONIC, Some(signal_event(rt + PERIODIC, 7, None)), 1200, 250),
                timer(libc::CLOCK_BOOTTIME, Some(silent()), 100_000, 0),
                timer(libc::CLOCK_PROCESS_CPUTIME_ID, None, 0, 0),
            ];
            (set, ids)
        },
        |(set, ids), seen| {
            seen.note("ids", format!("{:?}", ids.iter().map(|&i| i as usize).collect::<Vec<_>>()));
            // Each one-shot fires once, with its own id and value.
            for (sig, which, value) in [(ONE_SHOT, 0usize, 0xabcusize), (TO_THREAD, 1, 0xdef)] {
                let mut only = set;
                // SAFETY: a signal set of our own.
                unsafe {
                    libc::sigemptyset(&mut only);
                    libc::sigaddset(&mut only, rt + sig);
                }
                for wait in [3, 0] {
                    // SAFETY: plain data, then sigtimedwait fills it.
                    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
                    let ts = libc::timespec { tv_sec: wait, tv_nsec: 200_000_000 };
                    // SAFETY: waits on our own blocked signal.
                    let got = unsafe { libc::sigtimedwait(&only, &mut si, &ts) };
                    if got < 0 {
                        seen.note(&format!("timer {which} again"), "no");
                        break;
                    }
                    seen.expect(&format!("timer {which} code"), si.si_code, libc::SI_TIMER);
                    // SAFETY: a timer's siginfo carries its value.
                    let v = unsafe { si.si_value().sival_ptr } as usize;
                    seen.expect(&format!("timer {which} value"), v, value);
                }
            }
            let (value, interval) = remaining(ids[2]);
            seen.expect("periodic interval", interval, Duration::from_millis(250));
            seen.expect("periodic armed", value > Duration::ZERO && value <= interval, true);
            let (value, _) = remaining(ids[3]);
            seen.expect(
                "silent timer counting",
                value > Duration::from_secs(80) && value < Duration::from_secs(100),
                true,
            );
            seen.expect("disarmed timer", remaining(ids[4]), (Duration::ZERO, Duration::ZERO));
            // The periodic timer's signals have been arriving all along.
            let mut only = set;
            // SAFETY: a signal set of our own.
            unsafe {
                libc::sigemptyset(&mut only);
                libc::sigaddset(&mut only, rt + PERIODIC);
            }
            // SAFETY: plain data, then sigtimedwait fills it.
            let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let ts = libc::timespec { tv_sec: 1, tv_nsec: 0 };
            // SAFETY: waits on our own blocked signal.
            let got = unsafe { libc::sigtimedwait(&only, &mut si, &ts) };
            seen.expect("periodic signal", got, rt + PERIODIC);
            let next = timer(libc::CLOCK_MONOTONIC, None, 0, 0);
            seen.note("next id", next as usize);
            // SAFETY: deleting timers of our own.
            let gone = ids.iter().chain([&next]).all(|&i| unsafe { libc::timer_delete(i) } == 0);
            seen.expect("all deleted", gone, true);
        },
    );
}
