//! The fidelity suite's side of a case. Each program in `src/bin/` is one
//! case: it sets a piece of kernel state up, prints `ready` and waits for
//! SIGUSR2 (meanwhile the harness moves it, or not), then checks the state
//! and prints what it saw, one observation per line, and `PASS` or
//! `FAIL: why` last. The harness (`tests/tests/fidelity.rs`) runs every case
//! natively, away (checked on node 2) and bounced (2 -> 3 -> home), and
//! fails on any difference in output or exit status.
//!
//! A case's first lines may hold directives for the harness:
//! - `//! fidelity: user nobody`: run as uid and gid 65534 (every mode);
//! - `//! fidelity: refused`: om must refuse to move it, with a reason, and
//!   the process must then pass at home;
//! - `//! fidelity: terminal`: start it in a session of its own whose
//!   controlling terminal (a pty) is its stdin;
//! - `//! fidelity: hangup`: the same, and the harness hangs the terminal up
//!   (closes its master side) instead of sending SIGUSR2; the case waits for
//!   SIGHUP ([`case_after`]).

use std::io::Write;

/// An observation: printed as `what: value`.
pub struct Seen(Vec<String>);

impl Seen {
    pub fn new() -> Seen {
        Seen(Vec::new())
    }

    /// Note what was seen.
    pub fn note(&mut self, what: &str, value: impl std::fmt::Display) {
        self.0.push(format!("{what}: {value}"));
    }

    /// Note what was seen, and fail the case unless it equals `expected`.
    pub fn expect<T: std::fmt::Debug + PartialEq>(&mut self, what: &str, got: T, expected: T) {
        if got == expected {
            self.0.push(format!("{what}: {got:?}"));
        } else {
            self.0.push(format!("{what}: {got:?} FAIL: expected {expected:?}"));
        }
    }
}

impl Default for Seen {
    fn default() -> Self {
        Seen::new()
    }
}

/// Run a case: `setup` runs at once; `check` runs after the harness's SIGUSR2.
pub fn case<S>(setup: impl FnOnce() -> S, check: impl FnOnce(S, &mut Seen)) {
    case_after(libc::SIGUSR2, setup, |s, _, seen| check(s, seen));
}

/// Run a case that starts its check on signal `go` (SIGHUP for a `hangup`
/// case), and sees that signal's siginfo.
pub fn case_after<S>(go: i32, setup: impl FnOnce() -> S, check: impl FnOnce(S, &libc::siginfo_t, &mut Seen)) {
    let wait = block_go_signal(go);
    let state = setup();
    say("ready");
    let info = wait_go(&wait, go);
    let mut seen = Seen::new();
    check(state, &info, &mut seen);
    let failed: Vec<&String> = seen.0.iter().filter(|l| l.contains("FAIL")).collect();
    for l in &seen.0 {
        say(l);
    }
    if failed.is_empty() {
        say("PASS");
    } else {
        say(&format!("FAIL: {} checks", failed.len()));
        std::process::exit(1);
    }
}

/// The private-file-mapping cases: a file of three pages mapped privately,
/// page 0 written through the mapping; after the go signal, pages 1 and 2
/// are written through an fd and must show through the mapping, page 0
/// keep our write. With `unlink`, the file is removed before the move.
pub fn private_file_map(unlink: bool) {
    case(
        || {
            use std::os::fd::IntoRawFd;
            let p = std::env::temp_dir().join(format!("om-fid-pmap-{unlink}-{}", std::process::id()));
            std::fs::write(&p, vec![b'a'; 3 * 4096]).expect("write");
            let fd = std::fs::OpenOptions::new().read(true).write(true).open(&p).expect("open").into_raw_fd();
            if unlink {
                std::fs::remove_file(&p).expect("unlink");
            }
            // SAFETY: a private mapping of our own file.
            let m = unsafe {
                libc::mmap(std::ptr::null_mut(), 3 * 4096, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_PRIVATE, fd, 0)
            } as *mut u8;
            // SAFETY: page 0 is ours to write (copy on write).
            unsafe { *m = b'w' };
            (fd, m as usize, p)
        },
        |(fd, m, p), seen| {
            let m = m as *const u8;
            // SAFETY: write through the fd to pages 1 and 2 of the file.
            unsafe {
                libc::pwrite(fd, b"B".as_ptr().cast(), 1, 4096);
                libc::pwrite(fd, b"C".as_ptr().cast(), 1, 2 * 4096);
            }
            // SAFETY: reading our own mapping.
            let (p0, p1, p2) = unsafe { (*m, *m.add(4096), *m.add(2 * 4096)) };
            seen.expect("page 0 (written)", p0 as char, 'w');
            seen.expect("page 1 (from the file)", p1 as char, 'B');
            seen.expect("page 2 (from the file)", p2 as char, 'C');
            let _ = std::fs::remove_file(p);
        },
    );
}

/// A line on stdout, flushed (stdout is a pipe).
pub fn say(s: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{s}");
    let _ = o.flush();
}

/// The errno of the last failed call.
pub fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A call's result as the kernel gives it: the value, or `-errno`.
pub fn ret(r: i64) -> i64 {
    if r < 0 {
        -(errno() as i64)
    } else {
        r
    }
}

fn block_go_signal(go: i32) -> libc::sigset_t {
    // SAFETY: a sigset of our own, filled by the libc calls.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, go);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// How often the wait for the go signal ended early (EINTR): a move must
/// not cut it short where nothing natively would.
pub static GO_WAIT_INTERRUPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn wait_go(set: &libc::sigset_t, go: i32) -> libc::siginfo_t {
    loop {
        // SAFETY: plain data, filled by sigwaitinfo.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waits for a signal in our own set.
        let r = unsafe { libc::sigwaitinfo(set, &mut info) };
        if r == go {
            return info;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            GO_WAIT_INTERRUPTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }
}
