//! Which pages a running process writes, for a pre-copy that converges:
//! userfaultfd write protection in async mode (a write only clears the
//! page's protection; the process never waits or notices), read back and
//! armed again in one PAGEMAP_SCAN walk. This kernel has no soft-dirty
//! bits (see KERNEL-NOTES). The userfaultfd is made inside the process (it
//! binds to the caller's memory), taken here, and closed there at once.

use crate::ptrace::Tracee;
use crate::sys;
use std::os::fd::{AsRawFd, OwnedFd};

/// Write tracking of one process's memory.
pub struct Dirty {
    pid: i32,
    uffd: OwnedFd,
    pagemap: std::fs::File,
}

/// Page size.
const PAGE: u64 = 4096;

impl Dirty {
    /// Start tracking the stopped process `t` (every other thread of it
    /// stopped too, so none sees the fd it holds for the moment).
    pub fn start(t: &mut Tracee) -> std::io::Result<Dirty> {
        Dirty::start_with(t, false)
    }

    /// [`Dirty::start`]; with `kernel_faults`, the userfaultfd also sees the
    /// faults the kernel takes for the process (needed to serve missing
    /// pages in a post-copy, see `lazy`; only a privileged process may
    /// make one, as a guest is at its rebuild).
    pub fn start_with(t: &mut Tracee, kernel_faults: bool) -> std::io::Result<Dirty> {
        let mode = if kernel_faults { 0 } else { sys::UFFD_USER_MODE_ONLY };
        let flags = (libc::O_CLOEXEC | libc::O_NONBLOCK) as u64 | mode;
        let fd = t.syscall(libc::SYS_userfaultfd, [flags, 0, 0, 0, 0, 0]).map_err(std::io::Error::other)?;
        if fd < 0 {
            return Err(std::io::Error::from_raw_os_error(-fd as i32));
        }
        let taken = sys::pidfd_open(t.pid, 0).and_then(|p| sys::pidfd_getfd(p.as_raw_fd(), fd as i32));
        // Closed in the process whatever happened.
        let closed = t.syscall(libc::SYS_close, [fd as u64, 0, 0, 0, 0, 0]).map_err(std::io::Error::other)?;
        if closed < 0 {
            return Err(std::io::Error::from_raw_os_error(-closed as i32));
        }
        let uffd = taken?;
        sys::uffd_api_wp_async(uffd.as_raw_fd())?;
        let pagemap = std::fs::File::open(format!("/proc/{}/pagemap", t.pid))?;
        Ok(Dirty { pid: t.pid, uffd, pagemap })
    }

    /// Start tracking the running process `pid`: its threads are held for
    /// the moment it takes. None when it cannot be (the freeze then compares
    /// page hashes instead).
    pub fn track(pid: i32) -> Option<Dirty> {
        let mut threads = crate::ptrace::seize_all(pid, false).ok()?;
        let d = match threads.first_mut() {
            Some(t) => match t.use_vdso_syscall() {
                Ok(true) => Dirty::start(t),
                _ => Err(std::io::Error::other("no syscall instruction in the vdso")),
            },
            None => Err(std::io::Error::other("no thread")),
        };
        for t in threads {
            let _ = t.detach();
        }
        d.map_err(|e| tracing::info!(pid, %e, "writes cannot be tracked; the freeze compares page hashes")).ok()
    }

    /// The process tracked.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Another fd on the process's userfaultfd (for a post-copy).
    pub fn uffd(&self) -> std::io::Result<OwnedFd> {
        self.uffd.try_clone()
    }

    /// Track these ranges (each one whole mapping; those tracked already
    /// stay so). One that cannot be tracked (or a mapping made anew there
    /// later) is left out: its pages always count as written.
    pub fn arm(&mut self, ranges: &[(u64, u64)]) {
        for &(a, l) in ranges {
            if l > 0 {
                let _ = sys::uffd_register_wp(self.uffd.as_raw_fd(), a, l);
            }
        }
    }

    /// The pages of `ranges` written since the last call (or since they
    /// were armed), as sorted (address, bytes) runs; all of them are
    /// write-protected again. A page counts as written unless the kernel
    /// reports it tracked and unwritten (so a mapping made anew at the
    /// same place, which is not tracked, counts as written whole).
    pub fn take(&self, ranges: &[(u64, u64)]) -> std::io::Result<Vec<(u64, u64)>> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        let mut push = |a: u64, l: u64| {
            if l == 0 {
                return;
            }
            match out.last_mut() {
                Some((b, m)) if *b + *m == a => *m += l,
                _ => out.push((a, l)),
            }
        };
        let mut sorted: Vec<(u64, u64)> = ranges.iter().copied().filter(|r| r.1 > 0).collect();
        sorted.sort_unstable();
        let mut walked = Vec::new();
        for (a, l) in sorted {
            walked.clear();
            sys::pagemap_scan_rearm(self.pagemap.as_raw_fd(), a, a + l, &mut walked)?;
            // What the walk skipped, or reported untracked or written, counts.
            let mut at = a;
            for &(b, m, cat) in &walked {
                let (b, e) = (b.max(a), (b + m).min(a + l));
                if e <= b {
                    continue;
                }
                if b > at {
                    push(at, b - at);
                }
                if cat & sys::PAGE_IS_WPALLOWED == 0 || cat & sys::PAGE_IS_WRITTEN != 0 {
                    push(b, e - b);
                }
                at = at.max(e);
            }
            if at < a + l {
                push(at, a + l - at);
            }
        }
        debug_assert!(out.iter().all(|&(a, l)| a % PAGE == 0 && l % PAGE == 0));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// A Python child writes the pages of an mmap it is told to (one line
    /// each, answered when done): exactly those come back as written, then
    /// nothing until it writes again. (Needs python3, and ptrace of a
    /// child: root, or ptrace_scope 0.)
    #[test]
    fn writes_of_another_process_are_seen_page_by_page() {
        const PAGES: u64 = 64;
        let script = "import mmap, ctypes, sys\n\
                      m = mmap.mmap(-1, 64 * 4096)\n\
                      print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)\n\
                      for l in sys.stdin:\n    m[int(l) * 4096] = 7\n    print('ok', flush=True)\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test (apt-get install python3)");
        let mut to = child.stdin.take().expect("stdin");
        let mut from = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        from.read_line(&mut line).expect("address");
        let mem: u64 = line.trim().parse().expect("an address");
        let mut tell = |page: u64| {
            writeln!(to, "{page}").expect("tell");
            line.clear();
            from.read_line(&mut line).expect("answer");
            assert_eq!(line.trim(), "ok");
        };
        tell(0);
        let mut t = Tracee::seize(child.id() as i32, true).expect("seize the child (root or ptrace_scope 0 needed)");
        assert!(t.use_vdso_syscall().expect("vdso"), "no syscall instruction in the vdso");
        let mut d = Dirty::start(&mut t).expect("userfaultfd with WP_ASYNC (Linux 6.7+)");
        t.detach().expect("detach");
        let range = [(mem, PAGES * PAGE)];
        d.arm(&range);
        d.take(&range).expect("first scan");
        assert_eq!(d.take(&range).expect("scan"), vec![], "nothing written yet");
        tell(3);
        tell(4);
        tell(40);
        assert_eq!(d.take(&range).expect("scan"), vec![(mem + 3 * PAGE, 2 * PAGE), (mem + 40 * PAGE, PAGE)]);
        assert_eq!(d.take(&range).expect("scan"), vec![], "armed again");
        tell(4);
        assert_eq!(d.take(&range).expect("scan"), vec![(mem + 4 * PAGE, PAGE)]);
        // Written by another process (as the supervisor writes a forwarded
        // call's results): seen too.
        sys::process_vm_writev(child.id() as i32, &[9], &[(mem + 7 * PAGE, 1)]).expect("process_vm_writev");
        assert_eq!(d.take(&range).expect("scan"), vec![(mem + 7 * PAGE, PAGE)], "a write by process_vm_writev");
        // And through /proc/PID/mem.
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new().write(true).open(format!("/proc/{}/mem", child.id())).expect("mem");
            f.write_all_at(&[9], mem + 9 * PAGE).expect("write mem");
        }
        assert_eq!(d.take(&range).expect("scan"), vec![(mem + 9 * PAGE, PAGE)], "a write through /proc/PID/mem");
        // Memory that is not tracked counts as written whole.
        let other = [(mem + PAGES * PAGE, PAGE)];
        assert_eq!(d.take(&other).expect("scan"), other.to_vec());
        let _ = child.kill();
        let _ = child.wait();
    }
}
