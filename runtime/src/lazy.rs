//! Post-copy: the process runs at its destination before all of its memory
//! has arrived. The pages still owed are missing there, in ranges
//! registered with a userfaultfd of the process (made without
//! `UFFD_USER_MODE_ONLY`, so a page the kernel touches for it, in a call or
//! a supervisor's `process_vm_writev`, waits too). A fault on an owed page
//! asks the source for it ([`Msg::PageWant`]); the source pushes every owed
//! page meanwhile, in address order, the asked ones first
//! ([`push_pages`]); each arrives with `UFFDIO_COPY`, which wakes whoever
//! waits on it. A fault on a page that is not owed (never present at the
//! source) gets the zero page. The source keeps its copy until the
//! destination says every page arrived ([`Msg::LazyOk`]).
//!
//! If the page link fails first, the process cannot go on (it would run on
//! half its memory), and cannot go back (it ran here): the caller kills it
//! as if its host had died.

use crate::image::{self, ReadMode};
use crate::sys;
use crate::wire::{self, Frame, Msg, WireError};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const PAGE: u64 = 4096;
/// Pages pushed per frame.
const CHUNK: u64 = 16 * PAGE;

/// The pages owed, as sorted, disjoint [start, end) spans, and which of
/// them arrived.
#[derive(Debug, Default)]
pub struct Owed {
    spans: Vec<(u64, u64)>,
    /// Per span, one bit per page: arrived.
    arrived: Vec<Vec<u64>>,
    left: u64,
}

impl Owed {
    /// From (address, bytes) runs (page aligned; sorted and merged here).
    pub fn new(runs: &[(u64, u64)]) -> Owed {
        let mut v: Vec<(u64, u64)> =
            runs.iter().filter(|r| r.1 > 0).map(|&(a, l)| (a & !(PAGE - 1), (a + l).div_ceil(PAGE) * PAGE)).collect();
        v.sort_unstable();
        let mut spans: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (a, e) in v {
            match spans.last_mut() {
                Some(l) if a <= l.1 => l.1 = l.1.max(e),
                _ => spans.push((a, e)),
            }
        }
        let arrived = spans.iter().map(|&(a, e)| vec![0u64; ((e - a) / PAGE).div_ceil(64) as usize]).collect();
        let left = spans.iter().map(|&(a, e)| (e - a) / PAGE).sum();
        Owed { spans, arrived, left }
    }

    pub fn spans(&self) -> &[(u64, u64)] {
        &self.spans
    }

    /// Pages not arrived yet.
    pub fn left(&self) -> u64 {
        self.left
    }

    fn at(&self, addr: u64) -> Option<(usize, u64)> {
        let i = self.spans.partition_point(|s| s.1 <= addr);
        let &(a, e) = self.spans.get(i)?;
        (addr >= a && addr < e).then_some((i, (addr - a) / PAGE))
    }

    /// Whether the page at `addr` is owed and has not arrived.
    pub fn waiting(&self, addr: u64) -> bool {
        self.at(addr).is_some_and(|(i, p)| self.arrived[i][(p / 64) as usize] & (1 << (p % 64)) == 0)
    }

    /// Whether [addr, addr + len) lies inside one owed span.
    pub fn covers(&self, addr: u64, len: u64) -> bool {
        self.at(addr).is_some_and(|(i, _)| addr.checked_add(len).is_some_and(|end| end <= self.spans[i].1))
    }

    /// The page at `addr` arrived.
    pub fn arrived(&mut self, addr: u64) {
        if let Some((i, p)) = self.at(addr) {
            let w = &mut self.arrived[i][(p / 64) as usize];
            if *w & (1 << (p % 64)) == 0 {
                *w |= 1 << (p % 64);
                self.left -= 1;
            }
        }
    }
}

/// What a post-copy did, for the logs and the bench.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Faults on owed pages, answered from the source.
    pub fetched: u64,
    /// Faults on pages never present at the source (zero page).
    pub zero: u64,
    /// Bytes that arrived.
    pub bytes: u64,
    pub ms: f64,
}

/// The destination's side of a post-copy in progress.
pub struct Fetching {
    stop: Arc<AtomicBool>,
    faults: Option<std::thread::JoinHandle<()>>,
    recv: Option<std::thread::JoinHandle<Result<Stats, String>>>,
    stats: Arc<Mutex<Stats>>,
}

impl Fetching {
    /// Serve the missing pages of the process of `uffd` (its owed pages
    /// already missing, the ranges `registered` registered for missing
    /// faults) over the page link (`from`, `to`). Returns at once; the
    /// process may run.
    pub fn start<R, W>(uffd: OwnedFd, owed: Owed, registered: Vec<(u64, u64)>, from: R, to: W) -> Fetching
    where
        R: Read + Send + 'static,
        W: Write + Send + 'static,
    {
        let uffd = Arc::new(uffd);
        let owed = Arc::new(Mutex::new(owed));
        let to = Arc::new(Mutex::new(to));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(Mutex::new(Stats::default()));
        let t0 = std::time::Instant::now();
        let faults = {
            let (uffd, owed, to, stop, stats) = (uffd.clone(), owed.clone(), to.clone(), stop.clone(), stats.clone());
            std::thread::spawn(move || serve_faults(&uffd, &owed, &to, &stop, &stats))
        };
        let recv = {
            let (owed, stop, stats) = (owed.clone(), stop.clone(), stats.clone());
            std::thread::spawn(move || {
                let r = receive(&uffd, &owed, from, &stats);
                // Every page is there (or the link failed): no fault can
                // be answered from the source any more.
                let done = r.is_ok();
                if done {
                    let mut w = to.lock().unwrap_or_else(|p| p.into_inner());
                    let _ = wire::send(&mut *w, &Msg::LazyOk);
                    let _ = w.flush();
                    for &(a, l) in &registered {
                        let _ = sys::uffd_unregister(uffd.as_raw_fd(), a, l);
                    }
                }
                stop.store(true, Ordering::SeqCst);
                let mut s = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
                s.ms = t0.elapsed().as_secs_f64() * 1e3;
                r.map(|bytes| Stats { bytes, ..s })
            })
        };
        Fetching { stop, faults: Some(faults), recv: Some(recv), stats }
    }

    /// Wait until every page arrived (Ok) or the link failed (Err, why).
    pub fn wait(mut self) -> Result<Stats, String> {
        let r = match self.recv.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            _ => Err("the post-copy receiver failed".into()),
        };
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.faults.take() {
            let _ = h.join();
        }
        r
    }

    /// Faults answered so far.
    pub fn stats(&self) -> Stats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Fetching {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Answer the process's faults until told to stop: an owed page is asked
/// for, any other gets the zero page.
fn serve_faults<W: Write>(uffd: &OwnedFd, owed: &Mutex<Owed>, to: &Mutex<W>, stop: &AtomicBool, stats: &Mutex<Stats>) {
    let fd = uffd.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        match sys::poll(&[(fd, libc::POLLIN)], 50) {
            Ok(r) if r.first().is_some_and(|&e| e != 0) => {}
            Ok(_) => continue,
            Err(_) => return,
        }
        loop {
            let addr = match sys::uffd_next_fault(fd) {
                Ok(Some(a)) => a,
                Ok(None) => break,
                Err(_) => return,
            };
            let waiting = owed.lock().unwrap_or_else(|p| p.into_inner()).waiting(addr);
            if waiting {
                stats.lock().unwrap_or_else(|p| p.into_inner()).fetched += 1;
                let mut w = to.lock().unwrap_or_else(|p| p.into_inner());
                if wire::send(&mut *w, &Msg::PageWant { addr })
                    .and_then(|_| w.flush().map_err(WireError::from))
                    .is_err()
                {
                    // The receiver sees the link fail too.
                    return;
                }
            } else {
                stats.lock().unwrap_or_else(|p| p.into_inner()).zero += 1;
                // Owed pages that arrived meanwhile are there: this only wakes.
                let _ = sys::uffd_zeropage(fd, addr, PAGE);
            }
        }
    }
}

/// Receive pages until `LazyDone` and every owed page is in.
fn receive<R: Read>(uffd: &OwnedFd, owed: &Mutex<Owed>, mut from: R, stats: &Mutex<Stats>) -> Result<u64, String> {
    let fd = uffd.as_raw_fd();
    let mut bytes = 0u64;
    loop {
        match wire::recv(&mut from).map_err(|e| format!("the page link failed: {e}"))? {
            Frame::Msg(Msg::LazyPages { addr, len }) => {
                let ok = addr % PAGE == 0
                    && len % PAGE == 0
                    && len > 0
                    && len <= CHUNK
                    && owed.lock().unwrap_or_else(|p| p.into_inner()).covers(addr, len);
                if !ok {
                    return Err(format!("pages at {addr:#x} ({len} bytes) that are not owed"));
                }
                let data = match wire::recv(&mut from).map_err(|e| format!("the page link failed: {e}"))? {
                    Frame::Data(d) if d.len() as u64 == len => d,
                    _ => return Err(format!("no {len} bytes of pages at {addr:#x}")),
                };
                let mut at = 0u64;
                while at < len {
                    let n = sys::uffd_copy(fd, addr + at, &data[at as usize..])
                        .map_err(|e| format!("cannot fill the page at {:#x}: {e}", addr + at))?
                        as u64;
                    // A page already there (EEXIST) stops the copy: skip it.
                    at += if n == 0 { PAGE } else { n };
                }
                let mut o = owed.lock().unwrap_or_else(|p| p.into_inner());
                for p in (addr..addr + len).step_by(PAGE as usize) {
                    o.arrived(p);
                }
                bytes += len;
                stats.lock().unwrap_or_else(|p| p.into_inner()).bytes = bytes;
            }
            Frame::Msg(Msg::LazyDone) => {
                let left = owed.lock().unwrap_or_else(|p| p.into_inner()).left();
                if left != 0 {
                    return Err(format!("the source finished with {left} pages owed"));
                }
                return Ok(bytes);
            }
            Frame::Msg(m) => return Err(format!("{m:?} on the page link")),
            Frame::Data(d) => return Err(format!("{} data bytes out of place on the page link", d.len())),
        }
    }
}

/// The source's side: push every owed page of `pid` (frozen) over the page
/// link, pages asked for first, then `LazyDone`; return once the
/// destination says all arrived (its copy may go then).
pub fn push_pages<R, W>(pid: i32, owed: &[(u64, u64)], mode: ReadMode, from: R, to: &mut W) -> Result<u64, WireError>
where
    R: Read + Send + 'static,
    W: Write,
{
    let owed = Owed::new(owed);
    // The chunks to push, in address order; a chunk asked for goes first.
    let chunks: Vec<(u64, u64)> = owed
        .spans()
        .iter()
        .flat_map(|&(a, e)| (a..e).step_by(CHUNK as usize).map(move |c| (c, (e - c).min(CHUNK))))
        .collect();
    let mut sent = vec![false; chunks.len()];
    let (tx, rx) = std::sync::mpsc::channel::<Result<u64, WireError>>();
    // The destination's requests, and at last its LazyOk (as u64::MAX).
    let reader = std::thread::spawn(move || {
        let mut from = from;
        loop {
            let m = match wire::recv_msg(&mut from) {
                Ok(Msg::PageWant { addr }) => Ok(addr),
                Ok(Msg::LazyOk) => Ok(u64::MAX),
                Ok(m) => Err(WireError::Unexpected(format!("{m:?} on the page link"))),
                Err(e) => Err(e),
            };
            let end = !matches!(m, Ok(a) if a != u64::MAX);
            if tx.send(m).is_err() || end {
                return;
            }
        }
    });
    let mut buf = vec![0u8; CHUNK as usize];
    let mut total = 0u64;
    let mut send_chunk = |i: usize, to: &mut W| -> Result<(), WireError> {
        let Some(&(a, l)) = chunks.get(i) else { return Ok(()) };
        if std::mem::replace(&mut sent[i], true) {
            return Ok(());
        }
        let b = &mut buf[..l as usize];
        image::read_pages(pid, &[(a, l as usize)], b, mode)?;
        wire::send(to, &Msg::LazyPages { addr: a, len: l })?;
        wire::send_data(to, b)?;
        total += l;
        Ok(())
    };
    let chunk_of = |addr: u64| chunks.partition_point(|c| c.0 + c.1 <= addr);
    if chunks.is_empty() {
        wire::send(to, &Msg::LazyDone)?;
        to.flush()?;
    }
    let mut next = 0usize;
    loop {
        // Pages asked for first.
        let mut finished = false;
        loop {
            match rx.try_recv() {
                Ok(Ok(u64::MAX)) => finished = true,
                Ok(Ok(a)) => send_chunk(chunk_of(a), to)?,
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        to.flush()?;
        if finished {
            break;
        }
        if next < chunks.len() {
            send_chunk(next, to)?;
            next += 1;
            if next == chunks.len() {
                wire::send(to, &Msg::LazyDone)?;
                to.flush()?;
            }
            continue;
        }
        // All pushed: wait for the destination's word (or requests that
        // crossed the push).
        match rx.recv() {
            Ok(Ok(u64::MAX)) => break,
            Ok(Ok(a)) => send_chunk(chunk_of(a), to)?,
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(WireError::Closed),
        }
    }
    let _ = reader.join();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// Python at a fixed address: the source fills 64 pages with a pattern,
    /// the destination maps the same 64 pages empty.
    const SCRIPT: &str = "import ctypes, sys, os\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        libc.mmap.restype = ctypes.c_void_p\n\
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]\n\
        A, N = 0x7e5a00000000, 64 * 4096\n\
        p = libc.mmap(A, N, 3, 0x22 | 0x100000, -1, 0)\n\
        assert p == A, p\n\
        m = (ctypes.c_ubyte * N).from_address(A)\n\
        def pat(i):\n    return bytes((i * 7 + j) % 251 for j in range(4096))\n\
        if sys.argv[1] == 'source':\n    for i in range(64):\n        m[i * 4096:(i + 1) * 4096] = pat(i)\n\
        print(A, flush=True)\n\
        sys.stdin.readline()\n\
        if sys.argv[1] == 'dest':\n\
        \x20   r, w = os.pipe()\n    os.write(w, b'hello')\n\
        \x20   page10 = memoryview(m)[10 * 4096:11 * 4096]\n\
        \x20   assert os.readv(r, [page10]) == 5\n\
        \x20   bad = [i for i in range(64) if bytes(m[i * 4096:(i + 1) * 4096]) != (pat(i) if i < 48 else bytes(4096))\n\
        \x20          and not (i == 10 and bytes(m[i * 4096:i * 4096 + 5]) == b'hello' and bytes(m[i * 4096 + 5:(i + 1) * 4096]) == pat(10)[5:])]\n\
        \x20   print('ok' if not bad else 'bad %s' % bad, flush=True)\n\
        sys.stdin.readline()\n";

    fn python(
        role: &str,
    ) -> (std::process::Child, std::process::ChildStdin, std::io::BufReader<std::process::ChildStdout>) {
        let mut c = std::process::Command::new("python3")
            .args(["-c", SCRIPT, role])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed for this test (apt-get install python3)");
        let to = c.stdin.take().expect("stdin");
        let mut from = std::io::BufReader::new(c.stdout.take().expect("stdout"));
        let mut line = String::new();
        from.read_line(&mut line).expect("address");
        assert_eq!(line.trim(), (0x7e5a_0000_0000u64).to_string(), "{role} could not map its pages");
        (c, to, from)
    }

    /// A userfaultfd of `dst` that sees kernel faults (root needed), its
    /// 64 pages registered for missing faults.
    fn missing_pages(dst: &std::process::Child) -> (crate::dirty::Dirty, OwnedFd) {
        const A: u64 = 0x7e5a_0000_0000;
        let mut t = crate::ptrace::Tracee::seize(dst.id() as i32, true).expect("seize (root or ptrace_scope 0 needed)");
        assert!(t.use_vdso_syscall().expect("vdso"), "no syscall instruction in the vdso");
        let d = crate::dirty::Dirty::start_with(&mut t, true).expect("a userfaultfd that sees kernel faults (root)");
        t.detach().expect("detach");
        let uffd = d.uffd().expect("uffd");
        sys::uffd_register_missing(uffd.as_raw_fd(), A, 64 * PAGE).expect("register missing pages");
        (d, uffd)
    }

    /// A process runs with 48 of its pages owed (and 16 its source never
    /// had): each page it reads, and the one the kernel writes for it in a
    /// readv, has its bytes from the source (asked for, or pushed first);
    /// the 16 read as zeroes; every byte matches. (Needs python3, and root for a userfaultfd that
    /// sees kernel faults.)
    #[test]
    fn a_process_running_before_its_pages_arrive_sees_every_byte() {
        const A: u64 = 0x7e5a_0000_0000;
        let (mut src, src_in, _src_out) = python("source");
        let (mut dst, mut dst_in, mut dst_out) = python("dest");
        let (d, uffd) = missing_pages(&dst);
        let (here, there) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let owed = [(A, 48 * PAGE)];
        let fetch =
            Fetching::start(uffd, Owed::new(&owed), vec![(A, 64 * PAGE)], here.try_clone().expect("clone"), here);
        let src_pid = src.id() as i32;
        let pusher = std::thread::spawn(move || {
            let mut to = there.try_clone().expect("clone");
            push_pages(src_pid, &owed, ReadMode::Unpinned, there, &mut to)
        });
        writeln!(dst_in, "go").expect("go");
        let mut line = String::new();
        dst_out.read_line(&mut line).expect("verdict");
        let stats = fetch.wait();
        let pushed = pusher.join().expect("pusher");
        drop(dst_in);
        drop(src_in);
        let _ = dst.wait();
        let _ = src.wait();
        assert_eq!(line.trim(), "ok", "what the process read");
        assert_eq!(pushed.expect("push"), 48 * PAGE);
        let stats = stats.expect("every page arrived");
        assert_eq!(stats.bytes, 48 * PAGE);
        drop(d);
    }

    /// The source goes away with pages still owed: the destination learns
    /// it (the caller then kills the process, which waits on a page that
    /// will never come, as if its host had died), and the kill works.
    #[test]
    fn a_lost_page_link_is_reported_and_the_waiting_process_can_be_killed() {
        const A: u64 = 0x7e5a_0000_0000;
        let (mut dst, mut dst_in, mut dst_out) = python("dest");
        let (d, uffd) = missing_pages(&dst);
        let (here, there) = std::os::unix::net::UnixStream::pair().expect("socketpair");
        let owed = Owed::new(&[(A, 48 * PAGE)]);
        let fetch = Fetching::start(uffd, owed, vec![(A, 64 * PAGE)], here.try_clone().expect("clone"), here);
        writeln!(dst_in, "go").expect("go");
        // The process asks for its first page; the source dies instead.
        let mut want = there.try_clone().expect("clone");
        assert!(matches!(wire::recv_msg(&mut want), Ok(Msg::PageWant { .. })), "the first fault asks for its page");
        drop(want);
        drop(there);
        let r = fetch.wait();
        assert!(r.as_ref().is_err_and(|e| e.contains("page link failed")), "{r:?}");
        dst.kill().expect("kill the process waiting on its page");
        let st = dst.wait().expect("wait");
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        let mut line = String::new();
        let _ = dst_out.read_line(&mut line);
        assert_eq!(line, "", "it never got to check its memory");
        drop(d);
    }
}
