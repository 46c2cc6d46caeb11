//! The guest side of om: rebuild a migrated process in a fresh process, trap
//! its system calls with seccomp user notification, serve the local ones and
//! send the rest to the deputy at home.

pub mod filter;
mod lanes;
pub mod supervisor;
pub mod sys;

pub use supervisor::expel;

use crossbeam::channel::Sender;
use om_runtime::gang::Member;
use om_runtime::image::{self, Image, Target};
use om_runtime::link::Link;
use om_runtime::ptrace::{TraceError, Tracee};
use om_runtime::sys as rsys;
use om_runtime::transfer;
use om_runtime::wire::{self, Msg, WireError};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{0}")]
    Trace(#[from] TraceError),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("{0}")]
    Filter(#[from] filter::FilterError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Refused(String),
}

/// Policy of the node for incoming guests.
pub struct Host {
    pub node: u32,
    pub accept: bool,
    /// Most guests at once.
    pub max_guests: u32,
    /// Cgroup directories a new guest is put in.
    pub cgroups: Vec<std::path::PathBuf>,
    /// The only paths of this node a guest's mount namespace holds.
    pub consistent_paths: Vec<std::path::PathBuf>,
}

/// Guests run as `GUEST_UID_BASE + (pid % GUEST_UIDS)`: an unprivileged id
/// of their own, shared with no other process of the node.
pub const GUEST_UID_BASE: u32 = 3_500_000_000;
const GUEST_UIDS: u32 = 100_000_000;

static ATTACH: Mutex<Option<HashMap<u64, Sender<Link>>>> = Mutex::new(None);

/// An fd in the guest (`t`, still root, before its sandbox) on the
/// object of arriving gang `m` for shared region `r`: omd holds the
/// object, and the guest opens it through omd's /proc fd.
fn gang_object(m: &Member, t: &mut Tracee, scratch: u64, r: &image::Region) -> om_runtime::ptrace::Result<Option<u64>> {
    let ioe = |e: std::io::Error| TraceError::Io { pid: t.pid, what: "gang shared memory", source: e };
    let Some(f) = m.object(r).map_err(ioe)? else { return Ok(None) };
    let mut path = format!("/proc/{}/fd/{}", rsys::getpid(), f.as_raw_fd()).into_bytes();
    path.push(0);
    t.poke(scratch, &path)?;
    let flags = (libc::O_RDWR | libc::O_CLOEXEC) as u64;
    let fd =
        t.syscall_ok("open gang shared memory", libc::SYS_openat, [libc::AT_FDCWD as u64, scratch, flags, 0, 0, 0]);
    drop(f);
    fd.map(Some)
}
static GUESTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How many guests this node runs now (or is taking in).
pub fn guests() -> u32 {
    GUESTS.load(std::sync::atomic::Ordering::SeqCst)
}

/// A guest's place under the node's limit, taken when its offer is accepted
/// (so concurrent offers cannot all pass the check) and given back when
/// the guest ends, goes away, or never arrives.
struct Slot;

impl Slot {
    fn take(max: u32) -> Option<Slot> {
        use std::sync::atomic::Ordering::SeqCst;
        GUESTS.fetch_update(SeqCst, SeqCst, |n| (n < max).then_some(n + 1)).ok().map(|_| Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        GUESTS.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A second link from home arrived (`Attach`): hand it to the guest that
/// announced `token` in its offer. Unknown tokens are refused.
pub fn attach(token: u64, stream: Link) -> bool {
    let tx = ATTACH.lock().unwrap_or_else(|p| p.into_inner()).as_mut().and_then(|m| m.remove(&token));
    match tx {
        Some(tx) => tx.send(stream).is_ok(),
        None => false,
    }
}

/// Serve one incoming migration on `stream`, whose first message after Hello
/// was `offer`: answer it, rebuild the process, start it, then supervise it
/// until it exits or goes home.
pub fn host_guest(mut stream: Link, offer: Msg, host: &Host) -> Result<(), GuestError> {
    let Msg::Offer { pid, home, token, files, vdso_hash, vdso_len, xsave, gang, .. } = offer else {
        return Err(WireError::Unexpected(format!("{offer:?} instead of an offer")).into());
    };
    let mut slot = None;
    let answer = if !host.accept {
        Msg::Refused { reason: format!("node {} does not accept guests", host.node) }
    } else if let Some(s) = Slot::take(host.max_guests) {
        slot = Some(s);
        transfer::answer_offer(&files, vdso_hash, vdso_len, xsave)
    } else {
        Msg::Refused { reason: format!("node {} has reached its limit of {} guests", host.node, host.max_guests) }
    };
    if matches!(answer, Msg::Refused { .. }) {
        wire::send(&mut stream, &answer)?;
        return Ok(());
    }
    // Register the control link's token before home can send its Attach.
    let (ctl_tx, ctl_rx) = crossbeam::channel::bounded(1);
    ATTACH.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).insert(token, ctl_tx);
    wire::send(&mut stream, &answer)?;
    let forget = || {
        ATTACH.lock().unwrap_or_else(|p| p.into_inner()).as_mut().map(|m| m.remove(&token));
    };
    // A pre-copy (PreImage) or directly the image.
    let first = match wire::recv_msg(&mut stream) {
        Ok(m @ (Msg::PreImage(_) | Msg::Image(_))) => m,
        Ok(Msg::RestoreFailed { reason }) if reason == om_runtime::gang::ENDED => {
            // A member of a gang whose process ended on its way: the
            // others arriving here go on without it.
            forget();
            if gang.1 > 1 {
                Member::join(gang.0, gang.1).gang.sync.leave();
            }
            return Ok(());
        }
        Ok(m) => {
            forget();
            return Err(WireError::Unexpected(format!("{m:?} instead of an image")).into());
        }
        Err(e) => {
            forget();
            return Err(e.into());
        }
    };
    let span = tracing::info_span!("guest", home_pid = pid, home);
    let _g = span.enter();
    let started = std::time::Instant::now();
    let gpid = sys::spawn_stopped()?;
    if let Err(e) = om_runtime::procfs::join_cgroups(gpid, &host.cgroups) {
        tracing::warn!(%e, "cannot put the guest in this node's cgroup");
    }
    let member = (gang.1 > 1).then(|| Member::join(gang.0, gang.1));
    let rebuilt = rebuild(&mut stream, gpid, first, host, member.as_ref()).and_then(|(listener, img, dirty)| {
        let ctl = ctl_rx.recv_timeout(std::time::Duration::from_secs(10));
        ctl.map(|c| (listener, c, img, dirty))
            .map_err(|_| GuestError::Refused("home never opened its control link".into()))
    });
    forget();
    match (&rebuilt, &member) {
        (Err(GuestError::Refused(r)), Some(_)) if r == om_runtime::gang::ENDED => {}
        (Err(e), Some(m)) => m.gang.sync.fail(&format!("the rebuild of process {pid} failed: {e}")),
        _ => {}
    }
    drop(member);
    match rebuilt {
        Ok((listener, ctl, img, dirty)) => {
            wire::send(&mut stream, &Msg::Resumed { guest: gpid })?;
            tracing::info!(guest = gpid, ms = started.elapsed().as_secs_f64() * 1e3, "guest running");
            match supervisor::Supervisor::new(stream, ctl, gpid, listener, &img, gang, dirty) {
                Ok(s) => {
                    s.run();
                    drop(slot);
                }
                Err(e) => {
                    tracing::error!(%e, "cannot supervise the guest; killing it");
                    let _ = rsys::kill(gpid, libc::SIGKILL);
                }
            }
            Ok(())
        }
        Err(e) => {
            let _ = rsys::kill(gpid, libc::SIGKILL);
            let _ = rsys::waitpid(gpid, libc::__WALL);
            tracing::warn!(%e, "restore failed; the process stays at home");
            let _ = wire::send(&mut stream, &Msg::RestoreFailed { reason: e.to_string() });
            Err(e)
        }
    }
}

/// A guest rebuilt: each thread's listener (its guest tid, in image order),
/// the final image, and the tracker of the pages it writes.
type Rebuilt = (Vec<(i32, OwnedFd)>, Image, Option<om_runtime::dirty::Dirty>);

/// Rebuild the process in the fresh stopped process `gpid`: from a pre-copy
/// and then the final image, or from the image alone. Then drop to the
/// process's credentials, install the filter, and let it run. Returns the
/// listener of each thread (its guest tid, in image order) and the final image.
fn rebuild(
    stream: &mut Link,
    gpid: i32,
    first: Msg,
    host: &Host,
    gang: Option<&Member>,
) -> Result<Rebuilt, GuestError> {
    let object = |t: &mut Tracee, scratch: u64, r: &image::Region| match gang {
        Some(m) => gang_object(m, t, scratch, r),
        None => Ok(None),
    };
    let objects: Option<&image::ObjectSource<'_>> = gang.is_some().then_some(&object);
    let t0 = std::time::Instant::now();
    // The filter is built once, before the freeze: every thread gets it.
    let prog = filter::program(gpid)?;
    let mut t = Tracee::adopt_traceme_child(gpid)?;
    let (img, rs) = match first {
        Msg::PreImage(pre) => {
            let rs = image::restore_layout(&mut t, &pre, Target::Fresh, 0, None, objects)?;
            transfer::recv_pages(stream, &t, &pre)?;
            let next = match transfer::recv_rounds(stream, &t, &pre, &[]) {
                Ok(more) => {
                    tracing::info!(
                        ms = t0.elapsed().as_secs_f64() * 1e3,
                        bytes = pre.data_bytes(),
                        more,
                        "pre-copy received"
                    );
                    wire::recv_msg(stream)?
                }
                Err(WireError::Aborted(reason)) => Msg::RestoreFailed { reason },
                Err(e) => return Err(e.into()),
            };
            let img = match next {
                Msg::Image(img) => *img,
                // It ended after its pre-copy: a gang arriving here goes on
                // without it.
                Msg::RestoreFailed { reason } if reason == om_runtime::gang::ENDED => {
                    if let Some(m) = gang {
                        m.gang.sync.leave();
                    }
                    return Err(GuestError::Refused(reason));
                }
                m => return Err(WireError::Unexpected(format!("{m:?} instead of the image")).into()),
            };
            let rs = image::restore_layout_again(&mut t, &img, &pre, rs, Target::Fresh, None, objects)?;
            (img, rs)
        }
        Msg::Image(img) => {
            let rs = image::restore_layout(&mut t, &img, Target::Fresh, 0, None, objects)?;
            (*img, rs)
        }
        m => return Err(WireError::Unexpected(format!("{m:?} instead of an image")).into()),
    };
    let t1 = std::time::Instant::now();
    let bytes = transfer::recv_pages(stream, &t, &img)?;
    let t2 = std::time::Instant::now();
    image::restore_finish(&mut t, &img, Target::Fresh, &rs, Some("/"))?;
    transfer::log_shared(t.pid, &img, "rebuilt");
    let t3 = std::time::Instant::now();
    // Which pages it writes here is tracked from now on (for a pre-copy
    // home that converges): the userfaultfd is made inside it before its
    // filter would trap the call.
    t.syscall_ip = rs.scratch;
    let dirty = om_runtime::dirty::Dirty::start(&mut t)
        .map_err(|e| tracing::info!(%e, "writes cannot be tracked; going home compares page hashes"))
        .ok();
    // The mount namespace first: unshare refuses it once the fs is shared.
    enter_sandbox(&mut t, rs.scratch, &host.consistent_paths)?;
    // Then the guest's own unprivileged identity, before its other threads
    // exist: each inherits it from the leader's clone.
    drop_privileges(&mut t, gpid)?;
    let others = image::spawn_threads(&mut t, &img, rs.scratch + 1024)?;
    let mut threads = vec![t];
    threads.extend(others);
    let tids: Vec<i32> = threads.iter().map(|t| t.pid).collect();
    om_runtime::timers::restore(&mut threads[0], &img.timers, &tids, rs.scratch + 1024)?;
    // Each thread gets a filter, and so a listener, of its own.
    let mut listeners = Vec::with_capacity(threads.len());
    for t in threads.iter_mut() {
        t.syscall_ip = rs.scratch;
        listeners.push((t.pid, install_filter(t, gpid, &prog, rs.scratch)?));
    }
    image::queue_pending(&mut threads, &img, rs.scratch + 1024)?;
    image::unmap_scratch(&mut threads[0], rs.scratch)?;
    // A gang's members run once every one of them is rebuilt: the shared
    // pages are all in place, and none runs here while another stays home.
    if let Some(m) = gang {
        m.gang.sync.shrink_to(img.gang_size as usize);
        m.gang.sync.arrive(1).map_err(GuestError::Refused)?;
    }
    for t in threads {
        t.detach()?;
    }
    let t4 = std::time::Instant::now();
    tracing::info!(
        pages_ms = (t2 - t1).as_secs_f64() * 1e3,
        finish_ms = (t3 - t2).as_secs_f64() * 1e3,
        sandbox_ms = (t4 - t3).as_secs_f64() * 1e3,
        bytes,
        "rebuilt"
    );
    Ok((listeners, img, dirty))
}

/// Injected into the guest while it still has root's rights here: a mount
/// namespace of its own whose root is an empty tmpfs holding only the
/// cluster-consistent paths (bind mounts); the node's own files, /proc
/// included, are out of reach. Mappings made during the rebuild stay valid.
fn enter_sandbox(t: &mut Tracee, scratch: u64, keep: &[std::path::PathBuf]) -> Result<(), GuestError> {
    const NEW_ROOT: &str = "/proc";
    let (a, b) = (scratch + 12288, scratch + 14336);
    let put = |t: &Tracee, at: u64, s: &str| -> Result<u64, GuestError> {
        if s.len() >= 2000 || s.contains('\0') {
            return Err(GuestError::Refused(format!("path {s:?} is too long for the sandbox")));
        }
        let mut c = s.as_bytes().to_vec();
        c.push(0);
        t.poke(at, &c)?;
        Ok(at)
    };
    t.syscall_ok("unshare(CLONE_NEWNS)", libc::SYS_unshare, [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0])?;
    let root = put(t, a, "/")?;
    let private = libc::MS_REC | libc::MS_PRIVATE;
    t.syscall_ok("make mounts private", libc::SYS_mount, [0, root, 0, private, 0, 0])?;
    let target = put(t, a, NEW_ROOT)?;
    let fstype = put(t, b, "tmpfs")?;
    let opts = put(t, b + 16, "mode=0755,size=64k")?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV;
    t.syscall_ok("mount the sandbox root", libc::SYS_mount, [fstype, target, fstype, flags, opts, 0])?;
    for p in keep.iter().filter(|p| p.is_absolute()) {
        let Ok(meta) = std::fs::metadata(p) else { continue };
        let mut inner = std::path::PathBuf::from(NEW_ROOT);
        let comps: Vec<_> = p.components().skip(1).collect();
        for (i, c) in comps.iter().enumerate() {
            inner.push(c);
            let at = put(t, a, &inner.to_string_lossy())?;
            if i + 1 < comps.len() || meta.is_dir() {
                let _ = t.syscall(libc::SYS_mkdir, [at, 0o755, 0, 0, 0, 0])?;
            } else {
                let flags = (libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC) as u64;
                let fd = t.syscall_ok(
                    "create a bind target",
                    libc::SYS_openat,
                    [libc::AT_FDCWD as u64, at, flags, 0o644, 0, 0],
                )?;
                t.syscall_ok("close", libc::SYS_close, [fd, 0, 0, 0, 0, 0])?;
            }
        }
        let src = put(t, b, &p.to_string_lossy())?;
        let dst = put(t, a, &inner.to_string_lossy())?;
        let bind = libc::MS_BIND | libc::MS_REC;
        t.syscall_ok("bind a consistent path", libc::SYS_mount, [src, dst, 0, bind, 0, 0])?;
    }
    let old = put(t, b, &format!("{NEW_ROOT}/.old"))?;
    t.syscall_ok("mkdir", libc::SYS_mkdir, [old, 0o700, 0, 0, 0, 0])?;
    let new_root = put(t, a, NEW_ROOT)?;
    t.syscall_ok("pivot_root", libc::SYS_pivot_root, [new_root, old, 0, 0, 0, 0])?;
    let slash = put(t, a, "/")?;
    t.syscall_ok("chdir", libc::SYS_chdir, [slash, 0, 0, 0, 0, 0])?;
    let old = put(t, b, "/.old")?;
    t.syscall_ok("umount the node's tree", libc::SYS_umount2, [old, libc::MNT_DETACH as u64, 0, 0, 0, 0])?;
    t.syscall_ok("rmdir", libc::SYS_rmdir, [old, 0, 0, 0, 0, 0])?;
    Ok(())
}

/// Injected into thread `t` of guest `gpid` (its identity already dropped,
/// [`drop_privileges`]): the parent-death signal, the seccomp filter with a
/// listener (taken by us with pidfd_getfd from the process), and closing
/// the guest's copy of the listener (answered with CONTINUE as it traps).
fn install_filter(t: &mut Tracee, gpid: i32, prog: &[u8], scratch: u64) -> Result<OwnedFd, GuestError> {
    // The guest dies with the daemon thread that made it (a change of
    // credentials clears this, so it comes after): without its supervisor,
    // its calls could only fail. The process's own setting is answered
    // from home's.
    t.syscall_ok(
        "prctl(PR_SET_PDEATHSIG)",
        libc::SYS_prctl,
        [libc::PR_SET_PDEATHSIG as u64, libc::SIGKILL as u64, 0, 0, 0, 0],
    )?;

    let prog_at = scratch + 4096;
    let fprog_at = scratch + 1024;
    t.poke(prog_at, prog)?;
    let mut fprog = Vec::with_capacity(16);
    fprog.extend_from_slice(&((prog.len() / 8) as u16).to_le_bytes());
    fprog.extend_from_slice(&[0u8; 6]);
    fprog.extend_from_slice(&prog_at.to_le_bytes());
    t.poke(fprog_at, &fprog)?;
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    const SECCOMP_FILTER_FLAG_NEW_LISTENER: u64 = 8;
    // Once the supervisor has a call, only a fatal signal interrupts the
    // wait: a forwarded call is never abandoned half done at home.
    const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: u64 = 32;
    let flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV;
    let lfd = t.syscall_ok("seccomp", libc::SYS_seccomp, [SECCOMP_SET_MODE_FILTER, flags, fprog_at, 0, 0, 0])?;
    let pidfd = rsys::pidfd_open(gpid, 0)?;
    let listener = rsys::pidfd_getfd(pidfd.as_raw_fd(), lfd as i32)?;
    rsys::seccomp_set_sync_wakeup(listener.as_raw_fd())?;
    let lraw = listener.as_raw_fd();
    let mut answer = || -> std::io::Result<()> {
        loop {
            if let Some(n) = rsys::seccomp_recv(lraw)? {
                rsys::seccomp_send(lraw, n.id, 0, true)?;
                return Ok(());
            }
        }
    };
    t.syscall_hooked(libc::SYS_close, [lfd, 0, 0, 0, 0, 0], &mut answer)?;
    Ok(listener)
}

/// The guest's own identity, set in its leader while it is the only thread
/// (threads inherit it from the clone that makes them): an unprivileged
/// uid and gid of its own, no groups, and no_new_privs (identity calls are
/// answered with the home values; files are opened at home with the
/// process's credentials).
fn drop_privileges(t: &mut Tracee, gpid: i32) -> Result<(), GuestError> {
    let id = u64::from(GUEST_UID_BASE + (gpid as u32 % GUEST_UIDS));
    t.syscall_ok("setgroups", libc::SYS_setgroups, [0, 0, 0, 0, 0, 0])?;
    t.syscall_ok("setresgid", libc::SYS_setresgid, [id, id, id, 0, 0, 0])?;
    t.syscall_ok("setresuid", libc::SYS_setresuid, [id, id, id, 0, 0, 0])?;
    t.syscall_ok("prctl(PR_SET_NO_NEW_PRIVS)", libc::SYS_prctl, [libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0, 0])?;
    Ok(())
}
